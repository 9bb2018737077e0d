//! The XML the platforms exchange: WeCom's callback envelope and event, the chatbot push and
//! sendmsg bodies. All of it is flat or close to it — `<xml><name>value</name>…</xml>`,
//! values as text or CDATA — so this is one small reader ([`parse`], quick-xml underneath)
//! and one writer ([`Writer`], CDATA elements).
//!
//! The reader never panics and refuses what a callback has no business sending: DOCTYPE (and
//! so any custom entity), unknown entities, nesting deeper than [`MAX_DEPTH`], more than one
//! root, trailing content.
//!
//! The writer is hand-written rather than quick-xml's: it is on the send path of every
//! chatbot job, and appending to one `String` is simpler and faster than a byte writer whose
//! output is converted back.

use quick_xml::Reader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;

/// Callback XML is flat (a root and its fields) or close to it; deeper nesting is refused.
pub const MAX_DEPTH: usize = 8;

/// One element: its name, its own text (text, CDATA and entity references joined, in order)
/// and its child elements in document order. Attributes and comments are not kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    fn named(name: String) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// The text of the one leaf child named `name`; `None` when there is none, when it is
    /// empty, repeated, or has elements inside (a field the platforms send once, as text).
    pub fn field(&self, name: &str) -> Option<&str> {
        let mut named = self.children.iter().filter(|c| c.name == name);
        match (named.next(), named.next()) {
            (Some(c), None) if c.children.is_empty() && !c.text.is_empty() => Some(&c.text),
            _ => None,
        }
    }

    /// The `(name, text)` pairs of a flat document: the root must be `<xml>` holding only
    /// leaf elements and whitespace (what the platforms send and expect).
    pub fn into_flat(self) -> Result<Vec<(String, String)>, String> {
        if self.name != "xml" {
            return Err(format!("root element is <{}>, expected <xml>", self.name));
        }
        if !self.text.trim().is_empty() {
            return Err("text outside a field".into());
        }
        self.children
            .into_iter()
            .map(|c| match c.children.first() {
                Some(n) => Err(format!("nested element <{}> inside <{}>", n.name, c.name)),
                None => Ok((c.name, c.text)),
            })
            .collect()
    }
}

fn name_of(raw: &[u8]) -> Result<String, String> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| "element name is not UTF-8".to_owned())
}

/// Parse an XML document into its root element. DOCTYPE, nesting deeper than [`MAX_DEPTH`],
/// unknown entities, more than one root and trailing content are errors. Never panics.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut r = Reader::from_str(text);
    // The open elements, innermost last.
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = r.read_event().map_err(|e| format!("malformed XML: {e}"))?;
        match ev {
            Event::Start(s) => {
                if root.is_some() {
                    return Err("content after the root element".into());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} levels"));
                }
                stack.push(Element::named(name_of(s.name().as_ref())?));
            }
            Event::Empty(s) => {
                let e = Element::named(name_of(s.name().as_ref())?);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None if root.is_none() => root = Some(e),
                    None => return Err("content after the root element".into()),
                }
            }
            Event::End(_) => {
                let Some(e) = stack.pop() else {
                    return Err("unbalanced end tag".into());
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None => root = Some(e),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                match stack.last_mut() {
                    Some(e) => e.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| format!("bad CDATA: {e}"))?;
                match stack.last_mut() {
                    Some(e) => e.text.push_str(&s),
                    None => return Err("CDATA outside the root element".into()),
                }
            }
            Event::GeneralRef(g) => {
                let Some(e) = stack.last_mut() else {
                    return Err("entity outside the root element".into());
                };
                if let Some(ch) = g
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    e.text.push(ch);
                } else {
                    let n = g.decode().map_err(|e| format!("bad entity: {e}"))?;
                    let v = resolve_predefined_entity(&n)
                        .ok_or_else(|| format!("unknown entity &{n};"))?;
                    e.text.push_str(v);
                }
            }
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

/// Parse a flat document (see [`Element::into_flat`]).
pub fn parse_flat(text: &str) -> Result<Vec<(String, String)>, String> {
    parse(text)?.into_flat()
}

/// Characters XML 1.0 allows (`Char` production); Rust strings hold no surrogates.
pub fn char_ok(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Append `<![CDATA[value]]>`. A `]]>` inside the value is split across two CDATA sections
/// (`]]]]><![CDATA[>`); characters XML cannot carry are dropped.
pub fn push_cdata(out: &mut String, value: &str) {
    out.push_str("<![CDATA[");
    let clean: String = value.chars().filter(|&c| char_ok(c)).collect();
    out.push_str(&clean.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// `<![CDATA[value]]>` as a string (see [`push_cdata`]).
pub fn cdata(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 12);
    push_cdata(&mut out, value);
    out
}

/// Append `<name><![CDATA[value]]></name>` (see [`push_cdata`]).
pub fn push_cdata_element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_cdata(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// A flat document being written: `<root>`, then fields in order, then `</root>` on
/// [`finish`](Self::finish). Element names are the caller's constants and are not checked.
#[derive(Debug)]
pub struct Writer {
    out: String,
    root: &'static str,
}

impl Writer {
    /// Start `<root>`, with room for `capacity` bytes of fields.
    pub fn new(root: &'static str, capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity + 2 * root.len() + 5);
        out.push('<');
        out.push_str(root);
        out.push('>');
        Self { out, root }
    }

    /// `<name><![CDATA[value]]></name>` (see [`push_cdata`]).
    pub fn cdata(&mut self, name: &str, value: &str) -> &mut Self {
        push_cdata_element(&mut self.out, name, value);
        self
    }

    /// `<name>value</name>`, the value as escaped text (numbers, times, fixed words).
    pub fn text(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let value = value.to_string();
        let clean: String = value.chars().filter(|&c| char_ok(c)).collect();
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.out.push_str(&escape(clean.as_str()));
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// Close the root and return the document.
    pub fn finish(mut self) -> String {
        self.out.push_str("</");
        self.out.push_str(self.root);
        self.out.push('>');
        self.out
    }
}

#[cfg(test)]
mod tests;
