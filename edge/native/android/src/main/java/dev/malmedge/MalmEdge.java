package dev.malmedge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * The malm-edge native core for Android: an opened, validated bundle to search by photo or words.
 *
 * <p>A thin shell over the C API (edge/native/include/malm_edge.h) through
 * {@code libmalm_edge_jni.so}: each method is one C call. Failures throw {@link MalmEdgeException}
 * with the C status code and {@code malm_last_error()}; a closed engine throws
 * {@link IllegalStateException}. Methods are synchronized, since one {@code malm_engine} serves one
 * thread at a time; open one engine per thread for parallel searches.
 *
 * <pre>{@code
 * try (MalmEdge engine = MalmEdge.open(bundleDir.getPath())) {
 *     List<SearchResult> top5 = engine.searchRgb8(rgb, width, height, 5);
 * }
 * }</pre>
 *
 * <p>The app decodes the photo (BitmapFactory or ImageDecoder, with the EXIF orientation applied)
 * and passes RGB8 pixels, e.g. from {@link #rgb8FromArgb}. The bundle must be real files (copy it
 * from assets to filesDir once), since the table is memory-mapped and the catalog is SQLite.
 */
public final class MalmEdge implements AutoCloseable {
    static {
        System.loadLibrary("malm_edge_jni");
    }

    /** {@code malm_open_options}; the defaults are {@code malm_default_options()}. */
    public static final class Options {
        /** sha256 of every bundle file before use. */
        public boolean verifyChecksums = true;
        /** Load the ExecuTorch encoder; false for table + catalog only (an embedding from elsewhere). */
        public boolean loadEncoder = true;
        /** Encoder threads (XNNPACK pool, process-wide); 0 keeps the runtime's default. */
        public int threads = 0;
        /** Encoder name from the manifest, or null for the first executorch entry. */
        public String encoder = null;
        /**
         * Path of the trusted Ed25519 public key (PEM, {@code malm-edge keygen}'s KEY.pub, shipped
         * inside the app), or null. Set, the bundle must carry manifest.sig by that key over the
         * exact manifest bytes ({@link MalmEdgeException.Status#SIGNATURE} otherwise).
         */
        public String trustedPublicKey = null;
    }

    private long handle; // malm_engine*, 0 once closed

    private MalmEdge(long handle) {
        this.handle = handle;
    }

    /** Validate then open a bundle folder with the default options. */
    public static MalmEdge open(String bundleDir) {
        return open(bundleDir, new Options());
    }

    /** Validate then open a bundle folder: manifest, files and sha256 checked before use. */
    public static MalmEdge open(String bundleDir, Options options) {
        return new MalmEdge(nativeOpen(bundleDir, options.verifyChecksums, options.loadEncoder,
                options.threads, options.encoder, options.trustedPublicKey));
    }

    /** Validate a bundle exactly as {@link #open} does, loading nothing. */
    public static void verifyBundle(String bundleDir, boolean verifyChecksums) {
        nativeVerifyBundle(bundleDir, verifyChecksums, null);
    }

    /** The same, first requiring manifest.sig by the trusted public key (a PEM path; null: none). */
    public static void verifyBundle(String bundleDir, boolean verifyChecksums, String trustedPublicKey) {
        nativeVerifyBundle(bundleDir, verifyChecksums, trustedPublicKey);
    }

    /** Key id (16 hex digits, as {@code malm-edge keygen} prints) of a PEM public key file. */
    public static String publicKeyId(String publicKeyPath) {
        return nativePublicKeyId(publicKeyPath);
    }

    /** Version of the native library, e.g. "0.1.0". */
    public static String version() {
        return nativeVersion();
    }

    /**
     * Pack {@code Bitmap.getPixels} output (unpremultiplied ARGB ints, rows of {@code width}) as
     * RGB8, with transparency composited on white as edge/preprocess.py does (bit-exact with PIL's
     * {@code alpha_composite}); opaque pixels are copied unchanged.
     */
    public static byte[] rgb8FromArgb(int[] argb, int width, int height) {
        if (width < 0 || height < 0 || (long) width * height > argb.length) {
            throw new IllegalArgumentException("argb holds " + argb.length + " pixels, not " + width + "x" + height);
        }
        byte[] rgb = new byte[width * height * 3];
        for (int i = 0; i < width * height; i++) {
            int pixel = argb[i];
            int alpha = pixel >>> 24;
            rgb[3 * i] = overWhite((pixel >> 16) & 0xFF, alpha);
            rgb[3 * i + 1] = overWhite((pixel >> 8) & 0xFF, alpha);
            rgb[3 * i + 2] = overWhite(pixel & 0xFF, alpha);
        }
        return rgb;
    }

    // PIL's AlphaComposite.c over an opaque white background (7-bit coefficients, /255 by shifts),
    // as edge/native/src/image_io.cc over_white.
    private static byte overWhite(int channel, int alpha) {
        int coef1 = alpha * 128;
        int coef2 = 255 * 128 - coef1;
        int t = channel * coef1 + 255 * coef2 + (0x80 << 7);
        return (byte) (((((t >>> 8) + t) >>> 8) >>> 7));
    }

    public synchronized int embeddingDim() {
        return nativeEmbeddingDim(live());
    }

    /** Encoder input size S (the photo is resized and centre-cropped to S x S). */
    public synchronized int inputSize() {
        return nativeInputSize(live());
    }

    public synchronized long tableRows() {
        return nativeTableRows(live());
    }

    /** Name of the loaded encoder ("" when opened without one). */
    public synchronized String encoderName() {
        return nativeEncoderName(live());
    }

    /** RGB8 photo (rows of 3 * width bytes) to its L2-normalised embedding. */
    public synchronized float[] embedRgb8(byte[] rgb, int width, int height) {
        return nativeEmbedRgb8(live(), rgb, width, height);
    }

    /** Top-k table rows for an embedding of {@link #embeddingDim} floats, with their recipes. */
    public synchronized List<SearchResult> search(float[] embedding, int k) {
        return wrap(nativeSearchEmbedding(live(), embedding, k));
    }

    /** RGB8 photo to its top-k recipes (embed, search, catalog). */
    public synchronized List<SearchResult> searchRgb8(byte[] rgb, int width, int height, int k) {
        return wrap(nativeSearchRgb8(live(), rgb, width, height, k));
    }

    /** Recipes whose title or ingredients hold every word (FTS5; bm25, then row order). */
    public synchronized List<SearchResult> searchText(String words, int limit) {
        return wrap(nativeSearchText(live(), words, limit));
    }

    public synchronized boolean isClosed() {
        return handle == 0;
    }

    /** Free the engine (unmaps the table, closes the catalog); later calls throw. Idempotent. */
    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeClose(handle);
            handle = 0;
        }
    }

    private long live() {
        if (handle == 0) {
            throw new IllegalStateException("this MalmEdge engine is closed; open the bundle again");
        }
        return handle;
    }

    private static List<SearchResult> wrap(SearchResult[] results) {
        return Collections.unmodifiableList(Arrays.asList(results));
    }

    // Registered in JNI_OnLoad (edge/native/android/src/main/cpp/malm_edge_jni.cc).
    private static native long nativeOpen(String bundleDir, boolean verifyChecksums, boolean loadEncoder,
                                          int threads, String encoder, String trustedPublicKey);
    private static native void nativeVerifyBundle(String bundleDir, boolean verifyChecksums,
                                                  String trustedPublicKey);
    private static native String nativePublicKeyId(String publicKeyPath);
    private static native void nativeClose(long handle);
    private static native String nativeVersion();
    private static native int nativeEmbeddingDim(long handle);
    private static native int nativeInputSize(long handle);
    private static native long nativeTableRows(long handle);
    private static native String nativeEncoderName(long handle);
    private static native float[] nativeEmbedRgb8(long handle, byte[] rgb, int width, int height);
    private static native SearchResult[] nativeSearchEmbedding(long handle, float[] embedding, int k);
    private static native SearchResult[] nativeSearchRgb8(long handle, byte[] rgb, int width, int height, int k);
    private static native SearchResult[] nativeSearchText(long handle, String words, int limit);
}
