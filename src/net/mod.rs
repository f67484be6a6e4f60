//! Networking types shaped like `std::net`.
