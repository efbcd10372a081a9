package dev.malmedge;

/**
 * A failed call into the native core: the {@code malm_status} code and {@code malm_last_error()}.
 *
 * <p>The message names the file and what is wrong, exactly as the C API (and the CLI) word it, e.g.
 * {@code /data/.../bundle/table.i8: sha256 mismatch (...)}. Unchecked, like the platform's own
 * {@code SQLiteException}, so Kotlin and Java callers handle it where they choose.
 */
public final class MalmEdgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The {@code malm_status} codes of malm_edge.h (numbers are the C values). */
    public enum Status {
        INVALID_ARGUMENT(1),
        BUNDLE(2),
        IMAGE(3),
        ENCODER(4),
        CATALOG(5),
        UNSUPPORTED(6),
        NO_MEMORY(7),
        INTERNAL(8),
        /** A signature was required and manifest.sig is missing, malformed or by another key. */
        SIGNATURE(9);

        /** The C value. */
        public final int code;

        Status(int code) {
            this.code = code;
        }

        /** The status with this C value; {@link #INTERNAL} for a value this class does not know. */
        public static Status of(int code) {
            for (Status status : values()) {
                if (status.code == code) {
                    return status;
                }
            }
            return INTERNAL;
        }
    }

    private final int code;

    /** Called from the JNI layer (malm_edge_jni.cc) with the status and malm_last_error(). */
    MalmEdgeException(int code, String message) {
        super(message);
        this.code = code;
    }

    /** The {@code malm_status} value as returned by the C API. */
    public int getCode() {
        return code;
    }

    /** The status as an enum ({@code e.status} in Kotlin). */
    public Status getStatus() {
        return Status.of(code);
    }
}
