//! Coordinators: producer ids today; consumer groups, offsets and transactions
//! later (each in its own file).

pub mod producer_id;
