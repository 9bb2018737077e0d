//! The flat XML the platforms exchange: `<xml><name>value</name>…</xml>`, values as text or
//! CDATA. Parsed with quick-xml; anything else (nested elements, another root, bad entities,
//! trailing content) is an error, never a panic.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;

/// The root element's children, in document order (a repeated name keeps its first value).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value, or `None` when missing or empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parse `<xml>…</xml>` (the root must be named `xml`).
// One pass over quick-xml's events with its limits checked inline; split, the states of the
// pass would have to travel between the parts.
pub(crate) fn parse(text: &str) -> Result<Fields, String> {
    let mut r = Reader::from_str(text);
    let mut fields = Fields::default();
    // 0: before the root, 1: inside the root, 2: inside a field, 3: after the root.
    let mut depth = 0u8;
    let mut name = String::new();
    let mut value = String::new();
    loop {
        let ev = r.read_event().map_err(|e| format!("malformed XML: {e}"))?;
        match ev {
            Event::Start(s) => {
                let n = std::str::from_utf8(s.name().as_ref())
                    .map_err(|_| "element name is not UTF-8".to_owned())?
                    .to_owned();
                match depth {
                    0 if n == "xml" => depth = 1,
                    0 => return Err(format!("root element is <{n}>, expected <xml>")),
                    1 => {
                        name = n;
                        value.clear();
                        depth = 2;
                    }
                    2 => return Err(format!("nested element <{n}> inside <{name}>")),
                    _ => return Err("content after </xml>".into()),
                }
            }
            Event::Empty(s) => {
                let n = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                match depth {
                    1 => {
                        if fields.get(&n).is_none() {
                            fields.0.push((n, String::new()));
                        }
                    }
                    0 if n == "xml" => depth = 3,
                    _ => return Err(format!("unexpected element <{n}/>")),
                }
            }
            Event::End(_) => match depth {
                2 => {
                    if fields.get(&name).is_none() {
                        fields
                            .0
                            .push((std::mem::take(&mut name), std::mem::take(&mut value)));
                    }
                    depth = 1;
                }
                1 => depth = 3,
                _ => return Err("unbalanced end tag".into()),
            },
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                if depth == 2 {
                    value.push_str(&s);
                } else if !s.trim().is_empty() {
                    return Err("text outside a field".into());
                }
            }
            Event::CData(c) => {
                if depth != 2 {
                    return Err("CDATA outside a field".into());
                }
                value.push_str(&c.decode().map_err(|e| format!("bad CDATA: {e}"))?);
            }
            Event::GeneralRef(g) => {
                if depth != 2 {
                    return Err("entity outside a field".into());
                }
                if let Some(ch) = g
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    value.push(ch);
                } else {
                    let n = g.decode().map_err(|e| format!("bad entity: {e}"))?;
                    let resolved = resolve_predefined_entity(&n)
                        .ok_or_else(|| format!("unknown entity &{n};"))?;
                    value.push_str(resolved);
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Eof => break,
        }
    }
    if depth != 3 {
        return Err("document does not contain a complete <xml> element".into());
    }
    Ok(fields)
}

/// `<![CDATA[s]]>`, splitting any `]]>` inside `s` so the section stays well-formed.
pub(crate) fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_cdata_entities_and_empty_fields() {
        let f = parse(
            "<?xml version=\"1.0\"?>\n<xml>\n <appid><![CDATA[A1]]></appid>\n <msg>a &amp; b &#x4e2d;<![CDATA[<a href=\"x\">]]></msg><channel>0</channel><event/></xml>\n",
        )
        .unwrap();
        assert_eq!(f.get("appid"), Some("A1"));
        assert_eq!(f.get("msg"), Some("a & b 中<a href=\"x\">"));
        assert_eq!(f.get("channel"), Some("0"));
        assert_eq!(f.get("event"), Some(""));
        assert_eq!(f.non_empty("event"), None);
    }

    #[test]
    fn cdata_round_trips_terminators() {
        let v = "x]]>y";
        let f = parse(&format!("<xml><m>{}</m></xml>", cdata(v))).unwrap();
        assert_eq!(f.get("m"), Some(v));
    }

    #[test]
    fn rejects_what_is_not_flat_xml() {
        for bad in [
            "",
            "not xml",
            "<root><a>1</a></root>",
            "<xml><a><b>1</b></a></xml>",
            "<xml><a>1</a>",
            "<xml><a>&bogus;</a></xml>",
            "<xml><a>1</a></xml><xml/>",
            "<xml>loose<a>1</a></xml>",
            "<!DOCTYPE x><xml><a>1</a></xml>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
