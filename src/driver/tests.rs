//! In-process tests of the driver.
