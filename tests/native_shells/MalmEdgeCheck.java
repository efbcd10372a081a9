import dev.malmedge.MalmEdge;
import dev.malmedge.MalmEdgeException;
import dev.malmedge.SearchResult;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

/**
 * Drives dev.malmedge.MalmEdge for tests/test_native_shells.py, as an Android app would.
 *
 * <p>{@code java MalmEdgeCheck JOB OUT}: JOB is a UTF-8 file of "key value" lines ({@code bundle},
 * {@code bad_bundle}, {@code signed_bundle}, {@code key} (its public key), {@code k},
 * {@code photo RGB8FILE WIDTH HEIGHT}, {@code text WORDS}, {@code argb ARGBFILE WIDTH HEIGHT RGB8OUT});
 * OUT gets
 * one UTF-8 JSON object. Files rather than argv and stdout, so paths and words beyond ASCII do not
 * depend on the JVM's locale.
 */
public final class MalmEdgeCheck {
    private static final StringBuilder out = new StringBuilder();

    public static void main(String[] args) throws Exception {
        String bundle = null;
        String badBundle = null;
        String signedBundle = null;
        String publicKey = null;
        int k = 5;
        List<String[]> photos = new ArrayList<>();
        List<String> texts = new ArrayList<>();
        for (String line : Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8)) {
            String key = line.substring(0, line.indexOf(' '));
            String value = line.substring(line.indexOf(' ') + 1);
            if (key.equals("bundle")) bundle = value;
            else if (key.equals("bad_bundle")) badBundle = value;
            else if (key.equals("signed_bundle")) signedBundle = value;
            else if (key.equals("key")) publicKey = value;
            else if (key.equals("k")) k = Integer.parseInt(value);
            else if (key.equals("photo")) photos.add(value.split(" "));
            else if (key.equals("text")) texts.add(value);
            else if (key.equals("argb")) argbToRgb8(value.split(" "));
        }
        MalmEdge.Options options = new MalmEdge.Options();
        options.threads = 1;
        out.append("{\"version\": ").append(quote(MalmEdge.version()));
        MalmEdge engine = MalmEdge.open(bundle, options);
        try (MalmEdge open = engine) {
            out.append(", \"embedding_dim\": ").append(open.embeddingDim());
            out.append(", \"input_size\": ").append(open.inputSize());
            out.append(", \"table_rows\": ").append(open.tableRows());
            out.append(", \"encoder\": ").append(quote(open.encoderName()));
            searchPhotos(open, photos, k);
            out.append(", \"text\": [");
            for (int i = 0; i < texts.size(); i++) {
                out.append(i == 0 ? "" : ", ").append(results(open.searchText(texts.get(i), k)));
            }
            out.append("]");
            badArguments(open, photos.get(0));
        }
        out.append(", \"closed\": [");
        final byte[] rgb = Files.readAllBytes(Paths.get(photos.get(0)[0]));
        final int width = Integer.parseInt(photos.get(0)[1]);
        final int height = Integer.parseInt(photos.get(0)[2]);
        engine.close(); // a second close does nothing
        attempt("closed-searchRgb8", () -> engine.searchRgb8(rgb, width, height, 5), true);
        attempt("closed-searchText", () -> engine.searchText("chicken", 5), false);
        attempt("closed-embeddingDim", engine::embeddingDim, false);
        out.append("], \"is_closed\": ").append(engine.isClosed());
        final String bad = badBundle;
        out.append(", \"bad_bundle\": [");
        attempt("open", () -> MalmEdge.open(bad), true);
        attempt("verifyBundle", () -> { MalmEdge.verifyBundle(bad, true); return null; }, false);
        out.append("]");
        MalmEdge.Options noEncoder = new MalmEdge.Options();
        noEncoder.loadEncoder = false;
        try (MalmEdge tableOnly = MalmEdge.open(bundle, noEncoder)) {
            out.append(", \"no_encoder\": {\"encoder\": ").append(quote(tableOnly.encoderName()));
            out.append(", \"errors\": [");
            attempt("embed-without-encoder", () -> tableOnly.embedRgb8(rgb, width, height), true);
            out.append("]}");
        }
        signatures(bundle, signedBundle, publicKey, photos.get(0));
        out.append("}\n");
        Files.write(Paths.get(args[1]), out.toString().getBytes(StandardCharsets.UTF_8));
    }

    /** {@code argb IN WIDTH HEIGHT OUT}: big-endian ARGB ints in, MalmEdge.rgb8FromArgb bytes out. */
    private static void argbToRgb8(String[] job) throws Exception {
        java.nio.IntBuffer ints = java.nio.ByteBuffer.wrap(Files.readAllBytes(Paths.get(job[0]))).asIntBuffer();
        int[] argb = new int[ints.remaining()];
        ints.get(argb);
        byte[] rgb = MalmEdge.rgb8FromArgb(argb, Integer.parseInt(job[1]), Integer.parseInt(job[2]));
        Files.write(Paths.get(job[3]), rgb);
    }

    /** Options.trustedPublicKey: the signed bundle opens, the unsigned one is refused. */
    private static void signatures(String unsigned, String signed, String key, String[] photo) throws Exception {
        MalmEdge.Options options = new MalmEdge.Options();
        options.threads = 1;
        options.trustedPublicKey = key;
        out.append(", \"key_id\": ").append(quote(MalmEdge.publicKeyId(key)));
        MalmEdge.verifyBundle(signed, true, key);
        try (MalmEdge engine = MalmEdge.open(signed, options)) {
            byte[] rgb = Files.readAllBytes(Paths.get(photo[0]));
            int width = Integer.parseInt(photo[1]);
            int height = Integer.parseInt(photo[2]);
            out.append(", \"signed\": ").append(results(engine.searchRgb8(rgb, width, height, 5)));
        }
        out.append(", \"unsigned\": [");
        attempt("open", () -> MalmEdge.open(unsigned, options), true);
        attempt("verifyBundle", () -> { MalmEdge.verifyBundle(unsigned, true, key); return null; }, false);
        attempt("publicKeyId-missing", () -> MalmEdge.publicKeyId(key + ".absent"), false);
        out.append("]");
    }

    private static void searchPhotos(MalmEdge engine, List<String[]> photos, int k) throws Exception {
        out.append(", \"photos\": [");
        for (int i = 0; i < photos.size(); i++) {
            byte[] rgb = Files.readAllBytes(Paths.get(photos.get(i)[0]));
            int width = Integer.parseInt(photos.get(i)[1]);
            int height = Integer.parseInt(photos.get(i)[2]);
            float[] embedding = engine.embedRgb8(rgb, width, height);
            out.append(i == 0 ? "{" : ", {").append("\"embedding\": [");
            for (int j = 0; j < embedding.length; j++) {
                out.append(j == 0 ? "" : ", ").append(embedding[j]);
            }
            out.append("], \"by_photo\": ").append(results(engine.searchRgb8(rgb, width, height, k)));
            out.append(", \"by_embedding\": ").append(results(engine.search(embedding, k)));
            // every row at once: hundreds of results through one native frame (-Xcheck:jni counts refs)
            out.append(", \"all_rows\": ").append(results(engine.search(embedding, (int) engine.tableRows())));
            out.append("}");
        }
        out.append("]");
    }

    private static void badArguments(MalmEdge engine, String[] photo) throws Exception {
        final byte[] rgb = Files.readAllBytes(Paths.get(photo[0]));
        final int width = Integer.parseInt(photo[1]);
        final int height = Integer.parseInt(photo[2]);
        final int dim = engine.embeddingDim();
        out.append(", \"bad_arguments\": [");
        attempt("short-buffer", () -> engine.searchRgb8(rgb, width, height + 1, 5), true);
        attempt("null-rgb", () -> engine.embedRgb8(null, width, height), false);
        attempt("zero-size", () -> engine.searchRgb8(new byte[0], 0, 0, 5), false);
        attempt("negative-width", () -> engine.searchRgb8(rgb, -width, height, 5), false);
        attempt("huge-width", () -> engine.searchRgb8(rgb, Integer.MAX_VALUE, 2, 5), false);
        attempt("negative-k", () -> engine.searchRgb8(rgb, width, height, -1), false);
        attempt("wrong-dim", () -> engine.search(new float[dim + 1], 5), false);
        attempt("null-embedding", () -> engine.search(null, 5), false);
        attempt("nan-embedding", () -> engine.search(nanEmbedding(dim), 5), false);
        attempt("null-words", () -> engine.searchText(null, 5), false);
        attempt("nul-in-words", () -> engine.searchText("chicken\u0000curry", 5), false);
        attempt("null-bundle", () -> MalmEdge.open(null), false);
        out.append("]");
        // The engine still works after all of that.
        out.append(", \"after_errors\": ").append(results(engine.searchRgb8(rgb, width, height, 5)));
    }

    private static float[] nanEmbedding(int dim) {
        float[] embedding = new float[dim];
        embedding[0] = Float.NaN;
        return embedding;
    }

    interface Call {
        Object run() throws Exception;
    }

    private static void attempt(String name, Call call, boolean first) {
        out.append(first ? "" : ", ").append("{\"case\": ").append(quote(name));
        try {
            call.run();
            out.append(", \"exception\": null");
        } catch (MalmEdgeException e) {
            out.append(", \"exception\": \"MalmEdgeException\", \"code\": ").append(e.getCode());
            out.append(", \"status\": ").append(quote(e.getStatus().name()));
            out.append(", \"message\": ").append(quote(e.getMessage()));
        } catch (Exception e) {
            out.append(", \"exception\": ").append(quote(e.getClass().getName()));
            out.append(", \"message\": ").append(quote(e.getMessage()));
        }
        out.append("}");
    }

    private static String results(List<SearchResult> results) {
        StringBuilder json = new StringBuilder("[");
        for (int i = 0; i < results.size(); i++) {
            SearchResult r = results.get(i);
            json.append(i == 0 ? "{" : ", {").append("\"rank\": ").append(i + 1);
            json.append(", \"row\": ").append(r.row).append(", \"score\": ").append(r.score);
            json.append(", \"id\": ").append(quote(r.id)).append(", \"title\": ").append(quote(r.title));
            json.append(", \"ingredients\": ").append(r.ingredientsJson.isEmpty() ? "null" : r.ingredientsJson);
            json.append(", \"instructions\": ").append(r.instructionsJson.isEmpty() ? "null" : r.instructionsJson);
            json.append("}");
        }
        return json.append("]").toString();
    }

    /** A JSON string, everything outside printable ASCII as \\uXXXX (surrogate pairs stay pairs). */
    private static String quote(String text) {
        if (text == null) return "null";
        StringBuilder json = new StringBuilder("\"");
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '"' || c == '\\') json.append('\\').append(c);
            else if (c >= 0x20 && c < 0x7F) json.append(c);
            else json.append(String.format("\\u%04x", (int) c));
        }
        return json.append('"').toString();
    }
}
