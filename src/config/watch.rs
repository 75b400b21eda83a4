//! File watching (placeholder).
