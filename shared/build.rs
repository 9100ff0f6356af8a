//! The migrations are built into the binaries (`sqlx::migrate!` in `db`), but cargo does not
//! know the macro reads `migrations/`: without this, adding a migration rebuilt nothing and the
//! binaries kept the old set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
