//! The declarative configuration: the model an operator writes (`model`), whole-file validation
//! with every error's place (`validate`), and the CLI's edits as rules of the model (`change`).
//! Pure data: no I/O beyond parsing text.

mod change;
mod model;
mod validate;

pub use change::{Change, ChangeError, Removal};
pub use model::*;
pub use validate::{ConfigError, StatusRangeError, check_pin_dir};

#[cfg(test)]
mod tests;
