//! Duration and size units.
