//! Test hosts (skeleton; see issue 4).
