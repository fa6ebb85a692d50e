//! portpool pool layer (work in progress).
