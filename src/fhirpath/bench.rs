//! FHIRPath benchmark (filled in below).
