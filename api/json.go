package api

import (
	"unicode/utf8"
)

// AppendJSON appends req as JSON to b, as encoding/json would write it.
//
// nixpush-hook writes its request with this rather than encoding/json, whose
// reflection and Unicode tables add to the start-up cost of every run.
func (req EnqueueRequest) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	if len(req.Paths) > 0 {
		b = append(b, `"paths":[`...)
		for i, p := range req.Paths {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, p)
		}
		b = append(b, ']')
	}
	if req.DrvPath != "" {
		if len(req.Paths) > 0 {
			b = append(b, ',')
		}
		b = append(b, `"drv_path":`...)
		b = appendJSONString(b, req.DrvPath)
	}
	if req.Recheck {
		if len(req.Paths) > 0 || req.DrvPath != "" {
			b = append(b, ',')
		}
		b = append(b, `"recheck":true`...)
	}
	return append(b, '}')
}

// MarshalJSON makes encoding/json write the same bytes as AppendJSON.
func (req EnqueueRequest) MarshalJSON() ([]byte, error) { return req.AppendJSON(nil), nil }

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s per RFC 8259; invalid UTF-8 becomes U+FFFD, as
// with encoding/json.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
