//! Bounds on what one load may read, so a mistaken or hostile file costs a
//! clear refusal instead of the proxy's memory or a stalled reload thread.
//!
//! What the YAML parser (`serde_yaml` 0.9) already bounds, and meshd does
//! not repeat:
//! - alias expansion: a document may replay at most 100 events per event it
//!   holds, so a "billion laughs" text is refused with `repetition limit
//!   exceeded` after a bounded amount of work;
//! - nesting: 128 levels of sequences and mappings (`recursion limit
//!   exceeded`), so deep nesting cannot overflow the stack.
//!
//! What meshd adds, each far above real configurations (1,000 services
//! with their routes and policies are ~3,000 objects in ~2 MB):
//! - [`MAX_FILE_BYTES`]: a file larger than this is refused unread;
//! - [`MAX_TOTAL_BYTES`]: all files of one load together;
//! - [`MAX_OBJECTS`]: objects (documents and `List` items) of one load;
//!   parsing stops at the first object past it.
//!
//! An empty (0-byte) file is refused too: it is what a truncation or a
//! writer that has not written yet leaves, and applying it would drop every
//! route the file held.

/// Largest file read: 32 MiB.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Largest total of one load's files: 64 MiB.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// Most objects one load may hold: 50,000.
pub const MAX_OBJECTS: usize = 50_000;

/// Why a file, or the rest of a load, is not read.
#[derive(Debug, thiserror::Error)]
pub enum FileRefused {
    #[error("file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte (32 MiB) limit")]
    FileBytes { size: u64 },
    #[error("the files read so far hold {total} bytes, past the {MAX_TOTAL_BYTES}-byte (64 MiB) limit for one load")]
    TotalBytes { total: u64 },
    #[error("more than {MAX_OBJECTS} objects in one load; the rest of this file was not read")]
    Objects,
    #[error("file is empty (truncated, or not written yet)")]
    Empty,
}
