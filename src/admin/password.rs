//! Reading a password for `users add` and `users set-password`: from the terminal without
//! echo (asked twice), or from standard input when it is not a terminal (the first line),
//! so scripts can pipe one in. Never from the command line, where `ps` and shell history
//! would show it.

use std::io::{BufRead, IsTerminal};

/// The password, or why none could be read.
pub fn read(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("{prompt}: ")).map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the password from standard input: {err}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
