//! The `deorch` binary: node daemon and CLI in one. All logic lives in the
//! library; this is a thin shell.
fn main() {
    for (f, s) in deorch::schema::render_all() {
        std::fs::write(format!("schemas/{f}"), s).unwrap();
    }
}
