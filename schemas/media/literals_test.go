package media_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// mediaTypeLiteral matches a string literal that is a media type, with or
// without parameters. A literal that merely contains one (a JSON fixture's
// "datacontenttype":"application/json") is not a media type of the code.
var mediaTypeLiteral = regexp.MustCompile(`^(application|text|x-application|multipart|image|audio|video|message)/[A-Za-z0-9.+-]+(\s*;.*)?$`)

// allowed are the literals that stay, by file (from the repository root)
// and literal, each with its reason.
var allowed = map[string]map[string]string{}

// TestMediaTypesAreNamedOnce pins issue 9's rule "media types once": the
// media types the code speaks are named in this package, and nowhere else
// does a non-test Go file spell one as a string literal.
func TestMediaTypesAreNamedOnce(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if name := d.Name(); rel == "schemas/media" || name == "testdata" || name == "node_modules" || (strings.HasPrefix(name, ".") && rel != ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		imports := map[*ast.BasicLit]bool{}
		for _, imp := range f.Imports {
			imports[imp.Path] = true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || imports[lit] {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil || !mediaTypeLiteral.MatchString(s) {
				return true
			}
			if _, ok := allowed[rel][s]; ok {
				return true
			}
			t.Errorf("%s:%d: media type %q spelt out: use (or add) the constant in schemas/media", rel, fset.Position(lit.Pos()).Line, s)
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("only %d Go files read from %s: the walk is broken", files, root)
	}
}
