//! `diffad`: the line runtime's command-line entry point.

fn main() {
    println!("diffad {}", env!("CARGO_PKG_VERSION"));
}
