package hl7

import (
	"os"
	"path/filepath"
	"testing"
)

// A typical NHS ADT^A01 (about 1 KB): NHS number and local MRN, GP practice,
// next of kin, visit, with a few escapes.
const ukA01 = "MSH|^~\\&|PAS|RX1|CAREHUB|HUB|20240301093005+0000||ADT^A01^ADT_A01|PAS0000012345|P|2.4|||AL|NE|GBR|8859/1\r" +
	"EVN|A01|20240301093000|||C1234^NURSE^ANNE^^^^^^RX1\r" +
	"PID|1||9990500002^^^NHS^NH~D1234567^^^RX1^MR||SMITH^JOHN^PAUL^^MR||19580119|M|||1 HIGH STREET^FLAT 2\\S\\B^LEEDS^WEST YORKSHIRE^LS1 1AA^GBR^H||01132 000000^PRN^PH~07700 900000^PRN^CP|||M|C||||||||||||||||||||\r" +
	"PD1|||LEEDS MEDICAL PRACTICE^^B86001|G1234567^JONES^SARAH^^^DR\r" +
	"NK1|1|SMITH^MARY^^^MRS|SPO^Spouse^HL70063|1 HIGH STREET^^LEEDS^^LS1 1AA|01132 000000\r" +
	"PV1|1|I|RX1WARD5^BAY 2^BED 4^RX1^^^^^Ward 5|21|||C1234567^HOUSE^GREGORY^^^DR|||300|||||||C1234567^HOUSE^GREGORY^^^DR|01|V0012345678^^^RX1^VN|||||||||||||||||||||||RX1||A|||20240301092500\r" +
	"PV2|||^Chest pain \\T\\ breathlessness\r" +
	"AL1|1|DA|PENICILLIN^Penicillin^L|SV|Rash\r" +
	"ZU1|20240301|Y\r"

var benchPaths = []string{
	"MSH-3", "MSH-4", "MSH-7", "MSH-9.1", "MSH-9.2", "MSH-10", "MSH-12",
	"EVN-2", "PID-3(1).1", "PID-3(1).4", "PID-5.1", "PID-5.2", "PID-7", "PID-8", "PV1-3.1",
}

func benchInputs(b *testing.B) map[string][]byte {
	in := map[string][]byte{"uk-a01-1KB": []byte(ukA01)}
	data, err := os.ReadFile(filepath.Join(samplesDir, "generic", "ms-fhir-converter", "ADT-A01-01.hl7"))
	if err != nil {
		b.Fatal(err)
	}
	in["fhir-converter-a01-8KB"] = normalise(data)
	return in
}

// BenchmarkParse parses an ADT^A01 and reads 15 fields through terse paths,
// as a receiver routing and indexing the message would.
func BenchmarkParse(b *testing.B) {
	for name, data := range benchInputs(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				m, err := Parse(data)
				if err != nil {
					b.Fatal(err)
				}
				for _, p := range benchPaths {
					if _, err := m.Value(p); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}

// BenchmarkParseOnly is Parse without field access.
func BenchmarkParseOnly(b *testing.B) {
	for name, data := range benchInputs(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookup reads 15 fields through pre-parsed paths.
func BenchmarkLookup(b *testing.B) {
	m, err := Parse([]byte(ukA01))
	if err != nil {
		b.Fatal(err)
	}
	paths := make([]Path, len(benchPaths))
	for i, p := range benchPaths {
		paths[i] = MustParsePath(p)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range paths {
			_ = m.Lookup(p).String()
		}
	}
}

func BenchmarkUnescape(b *testing.B) {
	s := `Chest pain \T\ breathlessness\.br\Seen by Dr O\E\Brien \Xe9\ 2\S\3`
	b.ReportAllocs()
	for b.Loop() {
		_ = unescapeText(s, DefaultDelimiters)
	}
}

func BenchmarkNewACK(b *testing.B) {
	m, err := Parse([]byte(ukA01))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = NewACK(m, AckAE, "ACK123", fixedTime, ErrDetail{Segment: "PID", Sequence: 1, Field: 3, Code: CodeUnknownKeyIdentifier})
	}
}
