//! Driver traits (Hypervisor, Storage, Net) and their fakes. OWNER: engine helper.
