//! The `portpool` command-line tool (work in progress).

fn main() {
    eprintln!("portpool: the CLI is not built yet");
    std::process::exit(2);
}
