package dev.malmedge;

/**
 * One recipe found by a search: the {@code malm_results_*} accessors of malm_edge.h as fields.
 *
 * <p>Results come back best first; a result's rank is its index + 1. Text searches have score 0.
 */
public final class SearchResult {
    /** Table (and catalog) row. */
    public final long row;
    /** {@code (q_r . query) * scale_r} for photo and embedding searches; 0 for text searches. */
    public final float score;
    /** The recipe id of the catalog. */
    public final String id;
    public final String title;
    /** The ingredients as the catalog stores them: a JSON array of strings. */
    public final String ingredientsJson;
    /** The instructions as the catalog stores them: a JSON array of strings. */
    public final String instructionsJson;

    /** Called from the JNI layer (malm_edge_jni.cc). */
    SearchResult(long row, float score, String id, String title, String ingredientsJson,
                 String instructionsJson) {
        this.row = row;
        this.score = score;
        this.id = id;
        this.title = title;
        this.ingredientsJson = ingredientsJson;
        this.instructionsJson = instructionsJson;
    }

    @Override
    public String toString() {
        return "SearchResult{row=" + row + ", score=" + score + ", id=" + id + ", title=" + title + "}";
    }
}
