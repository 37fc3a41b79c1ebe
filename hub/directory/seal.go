package directory

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/seal"
)

// sealer seals a recipient's entry (its delivery section holds secrets: a
// webhook's signing secret, a FHIR server's token, a feed's API key) for
// the topic, under a key derived from the pseudonym key, which every hub
// process has and a reader of the topic does not. The additional data
// binds each sealed entry to its record's key and version, so that a
// sealed entry copied to another recipient or version does not open.
type sealer struct {
	box *seal.Box
}

func newSealer(pseudonymKey []byte) (*sealer, error) {
	box, err := seal.New(pseudonymKey, "carehub recipient directory v1")
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	return &sealer{box: box}, nil
}

func additional(key string, version int64) []byte {
	return []byte(key + "\x00" + strconv.FormatInt(version, 10))
}

func (s *sealer) seal(plain []byte, key string, version int64) (string, error) {
	return s.box.Seal(plain, additional(key, version))
}

// errSealed is why an entry sealed by a hub with another pseudonym key (or
// damaged) cannot be used.
var errSealed = errors.New("the recipient's entry does not open with this hub's pseudonym key (a hub with another key wrote it, or it is damaged)")

func (s *sealer) open(text, key string, version int64) ([]byte, error) {
	plain, err := s.box.Open(text, additional(key, version))
	if err != nil {
		return nil, errSealed
	}
	return plain, nil
}

// hidden is the value GET shows for a secret given inline; sent back in a
// PUT it keeps the secret stored at that place.
const hidden = "(hidden)"

var secretType = reflect.TypeOf(connector.Secret{})

// walkSecrets calls visit with every secret in node, a recipient entry's
// tree (or part of one) whose Go type is t, and its path in the tree. It
// follows the YAML field names of t (connector configurations are decoded
// by them), so it finds the secrets of any connector without knowing it.
func walkSecrets(t reflect.Type, node any, path []string, visit func(path []string, secret map[string]any)) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == secretType {
		if m, ok := node.(map[string]any); ok {
			visit(path, m)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := node.(map[string]any)
		if !ok {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, inline := yamlName(f)
			switch {
			case name == "-":
			case inline:
				walkSecrets(f.Type, node, path, visit)
			default:
				if v, ok := m[name]; ok {
					walkSecrets(f.Type, v, append(append([]string(nil), path...), name), visit)
				}
			}
		}
	case reflect.Slice, reflect.Array:
		l, ok := node.([]any)
		if !ok {
			return
		}
		for i, v := range l {
			walkSecrets(t.Elem(), v, append(append([]string(nil), path...), strconv.Itoa(i)), visit)
		}
	case reflect.Map:
		m, ok := node.(map[string]any)
		if !ok {
			return
		}
		for k, v := range m {
			walkSecrets(t.Elem(), v, append(append([]string(nil), path...), k), visit)
		}
	}
}

// yamlName is the name go.yaml.in/yaml/v3 gives a field, and whether it is
// inlined.
func yamlName(f reflect.StructField) (string, bool) {
	tag := f.Tag.Get("yaml")
	name, opts, _ := strings.Cut(tag, ",")
	inline := false
	for _, o := range strings.Split(opts, ",") {
		if o == "inline" {
			inline = true
		}
	}
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, inline
}

// at returns the node at path in tree.
func at(tree any, path []string) any {
	for _, p := range path {
		switch n := tree.(type) {
		case map[string]any:
			tree = n[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(n) {
				return nil
			}
			tree = n[i]
		default:
			return nil
		}
	}
	return tree
}
