//! The reconcile engine. OWNER: engine helper.
