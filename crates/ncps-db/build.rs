//! Rebuilds the crate when a migration file changes: `sqlx::migrate!` embeds them, and stable
//! Rust has no way for the macro to say so itself.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
