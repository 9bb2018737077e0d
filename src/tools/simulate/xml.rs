//! The flat XML the platforms exchange: `<xml><name>value</name>…</xml>`, values as text or
//! CDATA, read and written by [`crate::xml`]; anything else (nested elements, another root, bad
//! entities, trailing content) is an error, never a panic.

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

/// Parse `<xml>…</xml>` (the root must be named `xml`), with the project's one XML reader
/// ([`crate::xml::parse_flat`]).
pub(crate) fn parse(text: &str) -> Result<Fields, String> {
    crate::xml::parse_flat(text).map(Fields)
}

/// `<![CDATA[s]]>`, splitting any `]]>` inside `s` so the section stays well-formed.
pub(crate) fn cdata(s: &str) -> String {
    crate::xml::cdata(s)
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
