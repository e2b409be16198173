//! How the admin commands answer: a table for people, or JSON (`--json`) for scripts.

use serde::Serialize;

use super::{MachineRow, UserRow};

/// Left-aligned columns under a header, separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Users as a table.
pub fn users(users: &[UserRow]) -> String {
    if users.is_empty() {
        return "no users\n".into();
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.email.clone(),
                u.status.to_owned(),
                u.machines.to_string(),
                u.created_at.clone(),
                u.id.clone(),
            ]
        })
        .collect();
    table(&["EMAIL", "STATUS", "MACHINES", "CREATED", "ID"], &rows)
}

/// Machines as a table.
pub fn machines(machines: &[MachineRow]) -> String {
    if machines.is_empty() {
        return "no machines\n".into();
    }
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.name.clone(),
                m.email.clone(),
                m.last_seen.clone().unwrap_or_else(|| "never".into()),
                m.created_at.clone(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "OWNER", "LAST SEEN", "CREATED"], &rows)
}

/// `value` as one line of JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    // unwrap: the rows are strings and numbers.
    serde_json::to_string(value).unwrap() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A          BB\nlong cell  x\ns          y\n");
    }
}
