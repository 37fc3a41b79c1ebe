package nhs_test

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

func ExampleParse() {
	n, err := nhs.Parse("9434765919")
	if err != nil {
		panic(err)
	}
	fmt.Println(n)          // redacted by default
	fmt.Println(n.Digits()) // the value, where it is truly needed

	// Errors name the rule, never the value.
	_, err = nhs.Parse("9434765918")
	var pe *problem.Error
	if errors.As(err, &pe) {
		fmt.Println(pe.Kind, pe.Violations[0].Rule, pe.Message)
	}
	// Output:
	// NHS(redacted)
	// 9434765919
	// invalid nhs-number-check-digit NHS number fails the modulus eleven check digit test
}

func ExampleParseLoose() {
	n, err := nhs.ParseLoose("943 476 5919")
	fmt.Println(n.Digits(), err)
	// Output: 9434765919 <nil>
}

func ExampleNumber_LogValue() {
	n := nhs.MustParse("9434765919")
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // deterministic output
			}
			return a
		},
	}))
	log.Info("admitted", "nhs", n)
	fmt.Printf("%v %d %q %#v\n", n, n, n, n)
	// Output:
	// level=INFO msg=admitted nhs=NHS(redacted)
	// NHS(redacted) NHS(redacted) "NHS(redacted)" nhs.Number(redacted)
}

func ExamplePseudonymiser() {
	p, err := nhs.NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Pseudonym(nhs.MustParse("9434765919")))
	// Output: p1_45a773fc24fcc6fe391ae2397ee14365
}
