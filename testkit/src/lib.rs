//! portpool testkit layer (work in progress).
