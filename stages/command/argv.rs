//! `{in.NAME}`, `{out.NAME}` and `{cwd}` in a command's argv. Any other brace is literal, so
//! shell text such as `${HOME}` or a JSON argument passes through unchanged.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder<'a> {
    In(&'a str),
    Out(&'a str),
    Cwd,
}

enum Piece<'a> {
    Text(&'a str),
    Hole(Placeholder<'a>),
}

fn pieces(arg: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    loop {
        let next = ["{in.", "{out.", "{cwd}"].iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min();
        let Some((at, prefix)) = next else {
            if !rest.is_empty() {
                out.push(Piece::Text(rest));
            }
            return Ok(out);
        };
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        if prefix == "{cwd}" {
            out.push(Piece::Hole(Placeholder::Cwd));
            rest = &rest[at + prefix.len()..];
            continue;
        }
        let body = &rest[at + prefix.len()..];
        let end = body.find('}').ok_or_else(|| format!("`{prefix}` has no closing `}}`"))?;
        let name = &body[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{prefix}{name}}}`: the name may only use letters, digits and `_`"));
        }
        out.push(Piece::Hole(if prefix == "{in." { Placeholder::In(name) } else { Placeholder::Out(name) }));
        rest = &body[end + 1..];
    }
}

/// The placeholders in one argument.
pub fn placeholders(arg: &str) -> Result<Vec<Placeholder<'_>>, String> {
    Ok(pieces(arg)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Hole(h) => Some(h),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Single-quote `s` for `sh`, so a path with spaces or quotes stays one word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Replace the placeholders in `arg`; `quote` shell-quotes substituted paths.
pub fn substitute(
    arg: &str,
    lookup: &dyn Fn(Placeholder) -> Option<std::path::PathBuf>,
    quote: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    for piece in pieces(arg)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Hole(h) => {
                let path = lookup(h).ok_or_else(|| match h {
                    Placeholder::In(n) => format!("`{{in.{n}}}` names no input"),
                    Placeholder::Out(n) => format!("`{{out.{n}}}` names no output"),
                    Placeholder::Cwd => "`{cwd}` is not available".to_string(),
                })?;
                let text = path_text(&path)?;
                out.push_str(&if quote { shell_quote(text) } else { text.to_string() });
            }
        }
    }
    Ok(out)
}

fn path_text(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}
