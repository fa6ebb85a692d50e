//! portpool session layer (work in progress).
