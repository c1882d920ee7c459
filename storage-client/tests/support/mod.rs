//! Test support shared by the storage-client tests.
pub mod postgres;
