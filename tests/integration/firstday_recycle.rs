//! Issue "first day": see the tests below.
