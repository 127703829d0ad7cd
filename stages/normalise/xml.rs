//! A small, forgiving-but-honest XML tree for WeChat payloads. Malformed input is an `Err`,
//! never a panic; depth and size are bounded so hostile payloads cannot blow the stack.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;

const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    /// Concatenated text and CDATA directly inside this element.
    pub text: String,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// First descendant (depth-first, self included) with this name.
    pub fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Trimmed text of a direct child.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError(pub String);

/// Parse a document; returns a synthetic root whose children are the top-level elements.
pub fn parse(input: &str) -> Result<Node, XmlError> {
    let mut reader = Reader::from_str(input.trim_start_matches('\u{feff}'));
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        let ev = reader.read_event().map_err(|e| XmlError(format!("at byte {}: {e}", reader.buffer_position())))?;
        match ev {
            Event::Start(s) => {
                if stack.len() > MAX_DEPTH {
                    return Err(XmlError("nesting too deep".into()));
                }
                stack.push(element(&s)?);
            }
            Event::Empty(s) => {
                let node = element(&s)?;
                stack.last_mut().ok_or_else(|| XmlError("unbalanced".into()))?.children.push(node);
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                let parent = stack.last_mut().ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                parent.children.push(node);
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| XmlError(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| XmlError(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|e| XmlError(e.to_string()))?.map(String::from)
                } else {
                    let name = r.decode().map_err(|e| XmlError(e.to_string()))?;
                    resolve_predefined_entity(&name).map(str::to_string)
                };
                let s = resolved.ok_or_else(|| XmlError("unknown entity".into()))?;
                push_text(&mut stack, &s)?;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if stack.len() != 1 {
        return Err(XmlError("unclosed element".into()));
    }
    let root = stack.pop().unwrap_or_default();
    if root.children.is_empty() {
        return Err(XmlError("no element".into()));
    }
    Ok(root)
}

fn push_text(stack: &mut [Node], s: &str) -> Result<(), XmlError> {
    match stack.len() {
        0 => Err(XmlError("unbalanced".into())),
        // Text outside the root element: only whitespace is allowed.
        1 if !s.trim().is_empty() => Err(XmlError("text outside the root element".into())),
        1 => Ok(()),
        n => {
            stack[n - 1].text.push_str(s);
            Ok(())
        }
    }
}

fn element(s: &quick_xml::events::BytesStart<'_>) -> Result<Node, XmlError> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| XmlError(e.to_string()))?;
        let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let v = a.unescape_value().map_err(|e| XmlError(e.to_string()))?.into_owned();
        attrs.push((k, v));
    }
    Ok(Node { name, attrs, children: Vec::new(), text: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cdata_entities_and_attributes() {
        let r = parse("<?xml version=\"1.0\"?>\n<msg a=\"x&amp;y\"><t><![CDATA[微信]]>转账&#x0A;&lt;</t><e/></msg>")
            .unwrap();
        let msg = r.child("msg").unwrap();
        assert_eq!(msg.attr("a"), Some("x&y"));
        assert_eq!(msg.child("t").unwrap().text, "微信转账\n<");
        assert!(msg.child("e").is_some());
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "<msg>", "<a></b>", "</a>", "<a x=\"1></a>", "text only", "<a>&bogus;</a>"] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
