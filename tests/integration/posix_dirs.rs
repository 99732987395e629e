//! Issue-22 filesystem fidelity tests (see docs/SEMANTICS.md).
