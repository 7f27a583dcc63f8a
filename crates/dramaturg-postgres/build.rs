//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds
//! the files of `migrations/`, and cargo does not know it reads them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
