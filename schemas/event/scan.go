package event

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// keyFrame is one open object or array while scanning for duplicate keys.
type keyFrame struct {
	array bool
	index int                 // arrays: the current element
	key   []byte              // objects: the current member's name
	keys  [][]byte            // objects: names seen so far
	set   map[string]struct{} // objects with many members: names seen so far
}

// scanResult is what one pass over an event's bytes finds.
type scanResult struct {
	dup       string // pointer to the first member that repeats a name in its object
	hasDup    bool
	dataStart int // the top-level data member's value, if it is an object:
	dataEnd   int // b[dataStart:dataEnd]; dataEnd is 0 if there is none
}

// scan makes one pass over b, which must be valid JSON, to find the first
// repeated member name and the bytes of the top-level "data" object.
//
// Repeated names are rejected because encoding/json keeps the last of two
// equal names and other parsers the first: a validator and a recipient that
// disagree could read two different NHS numbers from one event. When "data"
// itself repeats, the last one wins, as in encoding/json.
func scan(b []byte) scanResult {
	var r scanResult
	var stack []keyFrame // frames are reused, with their slices, as depth returns
	depth := 0
	expectKey := false
	inData := false
	for i := 0; i < len(b); {
		switch b[i] {
		case '{', '[':
			if depth == 1 && b[i] == '{' && !stack[0].array && string(stack[0].key) == "data" {
				r.dataStart, inData = i, true
			}
			if depth == len(stack) {
				stack = append(stack, keyFrame{})
			}
			f := &stack[depth]
			f.array, f.index, f.key, f.keys, f.set = b[i] == '[', 0, nil, f.keys[:0], nil
			depth++
			expectKey = !f.array
			i++
		case '}', ']':
			depth--
			expectKey = false
			i++
			if depth == 1 && inData {
				r.dataEnd, inData = i, false
			}
		case ',':
			if f := &stack[depth-1]; f.array {
				f.index++
			} else {
				expectKey = true
			}
			i++
		case '"':
			j := i + 1
			for b[j] != '"' {
				if b[j] == '\\' {
					j++
				}
				j++
			}
			if expectKey {
				f := &stack[depth-1]
				key := normaliseKey(b[i+1 : j])
				if seen(f, key) && !r.hasDup {
					r.dup, r.hasDup = duplicatePointer(stack[:depth-1], key), true
				}
				f.key = key
				expectKey = false
			}
			i = j + 1
		default:
			i++
		}
	}
	return r
}

// seen reports whether key was already seen in f, and records it. Past 16
// names it switches to a set, so that a hostile object with very many
// members costs linear time, not quadratic.
func seen(f *keyFrame, key []byte) bool {
	if f.set == nil && len(f.keys) < 16 {
		for _, k := range f.keys {
			if bytes.Equal(k, key) {
				return true
			}
		}
		f.keys = append(f.keys, key)
		return false
	}
	if f.set == nil {
		f.set = make(map[string]struct{}, 4*len(f.keys))
		for _, k := range f.keys {
			f.set[string(k)] = struct{}{}
		}
	}
	if _, ok := f.set[string(key)]; ok {
		return true
	}
	f.set[string(key)] = struct{}{}
	return false
}

// normaliseKey returns the member name a raw key spells ("\u0061" is "a").
func normaliseKey(raw []byte) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw
	}
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var s string
	if json.Unmarshal(q, &s) != nil {
		return raw
	}
	return []byte(s)
}

// duplicatePointer builds the pointer to the repeated member from the
// enclosing frames. A name that does not look like a field name ends the
// pointer at its parent (see safePointer).
func duplicatePointer(frames []keyFrame, key []byte) string {
	p := ""
	for _, f := range frames {
		if f.array {
			p += "/" + strconv.Itoa(f.index)
			continue
		}
		q := safePointer(p, string(f.key))
		if q == p {
			return p
		}
		p = q
	}
	return safePointer(p, string(key))
}
