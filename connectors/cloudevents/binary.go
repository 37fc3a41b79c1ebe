package cloudevents

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"strings"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
)

// The CloudEvents HTTP protocol binding's binary content mode (section 3.1):
// each context attribute is a header named ce-<attribute>, the Content-Type
// header is the datacontenttype attribute, and the body is the data. This
// file turns such a request into the structured-mode JSON document the
// Ingest validates, so that both modes are held to the same rules and give
// the same canonical event.

// headerPrefix starts every attribute header of the binary mode.
const headerPrefix = "ce-"

// Rules of the binary mode, as they appear in problem.Violation.Rule. The
// attributes are then checked by the same rules as in structured mode, with
// "/<attribute>" naming the ce-<attribute> header and "/data/..." pointing
// into the body.
const (
	RuleBinaryHeaderTwice     = "cloudevents-binary-header-repeated"      // a ce- header is given more than once
	RuleBinaryHeaderEncoding  = "cloudevents-binary-header-encoding"      // a ce- header value is not percent-encoded UTF-8
	RuleBinaryDataContentType = "cloudevents-binary-datacontenttype"      // a ce-datacontenttype header (it is the Content-Type)
	RuleBinaryDataHeader      = "cloudevents-binary-data"                 // a ce-data or ce-data_base64 header (data is the body)
	RuleBinaryMediaType       = "cloudevents-binary-datacontenttype-json" // the Content-Type is not JSON
)

// hasBinaryHeaders reports whether h holds any ce- header: the request is
// then a binary-mode event (unless its Content-Type names an event format).
func hasBinaryHeaders(h http.Header) bool {
	for k := range h {
		if isBinaryHeader(k) {
			return true
		}
	}
	return false
}

func isBinaryHeader(canonical string) bool {
	return len(canonical) > len(headerPrefix) && strings.EqualFold(canonical[:len(headerPrefix)], headerPrefix)
}

// binaryEvent builds the structured-mode JSON document of a binary-mode
// request: its ce- headers, decoded, as attributes; "datacontenttype" from
// contentType ("application/json" for any JSON media type, as the canonical
// event has it); and the body as data. A body that is not JSON is Malformed;
// a Content-Type that is not JSON is MediaType (carehub's events carry JSON
// data); a header that cannot be decoded is Invalid, each violation naming the
// attribute.
func binaryEvent(h http.Header, contentType string, body []byte) ([]byte, error) {
	var vs []problem.Violation
	attrs := map[string]string{}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names) // the same request, the same problem
	for _, k := range names {
		if !isBinaryHeader(k) {
			continue
		}
		name := strings.ToLower(k[len(headerPrefix):])
		ptr := "/" + safeName(name)
		values := h[k]
		switch {
		case name == "datacontenttype":
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: RuleBinaryDataContentType,
				Detail: "in binary mode the datacontenttype is the Content-Type header; a ce-datacontenttype header must not be sent"})
			continue
		case name == "data" || name == "data_base64":
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: RuleBinaryDataHeader,
				Detail: "in binary mode the data is the request body, not a header"})
			continue
		case len(values) != 1:
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: RuleBinaryHeaderTwice,
				Detail: "each ce- header is given once"})
			continue
		}
		v, ok := event.DecodeHeaderValue(values[0])
		if !ok {
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: RuleBinaryHeaderEncoding,
				Detail: "a ce- header value is UTF-8, percent-encoded where it is not printable ASCII (CloudEvents HTTP binding 3.1.3.2)"})
			continue
		}
		attrs[name] = v
	}
	if contentType != "" {
		mt := media.Of(contentType)
		if mt != media.JSON && !strings.HasSuffix(mt, "+json") {
			vs = append(vs, problem.Violation{Pointer: "/datacontenttype", Rule: RuleBinaryMediaType,
				Detail: "the data of a carehub event is a JSON object: send it with Content-Type application/json"})
			return nil, &problem.Error{Kind: problem.MediaType, Message: "binary-mode event data must be JSON", Violations: vs}
		}
		attrs["datacontenttype"] = media.JSON
	}
	if len(vs) > 0 {
		return nil, &problem.Error{Kind: problem.Invalid, Message: "the binary-mode event's ce- headers are invalid", Violations: vs}
	}
	if !json.Valid(body) {
		return nil, &problem.Error{Kind: problem.Malformed, Message: "the body is not JSON",
			Violations: []problem.Violation{{Pointer: "/data", Rule: "cloudevents-data",
				Detail: "in binary mode the body is the event's data, which must be a JSON object"}}}
	}
	var b bytes.Buffer
	b.Grow(len(body) + 64*len(attrs))
	b.WriteByte('{')
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kj, _ := json.Marshal(k)
		vj, _ := json.Marshal(attrs[k])
		b.Write(kj)
		b.WriteByte(':')
		b.Write(vj)
		b.WriteByte(',')
	}
	b.WriteString(`"data":`)
	b.Write(body)
	b.WriteByte('}')
	return b.Bytes(), nil
}

// safeName returns an attribute name for a violation pointer: the name when
// it has the shape of one, else a placeholder (a header name is the sender's
// text, and is not echoed unless it is plainly a name).
func safeName(name string) string {
	if name == "" || len(name) > 40 {
		return "(header)"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return "(header)"
		}
	}
	return name
}
