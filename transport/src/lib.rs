//! portpool transport layer (work in progress).
