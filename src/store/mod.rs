//! The desired-state store. OWNER: store helper.
