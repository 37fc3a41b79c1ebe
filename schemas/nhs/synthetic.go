package nhs

import (
	"fmt"
	"strconv"
)

// Synthetic returns the seq-th valid NHS number of the 999 test range
// (999 000 0000 to 999 999 9999), which no real patient holds. Fixtures,
// benchmarks and load generators use it, so a test can look for the digits
// in logs and error strings (canaries). Numbers whose check digit would be
// 10 are skipped; seq wraps after about 909,000 numbers.
func Synthetic(seq int) Number {
	if seq < 0 {
		seq = -seq
	}
	for i := seq; ; i++ {
		base := fmt.Sprintf("999%06d", i%1000000)
		if check, ok := CheckDigit(base); ok {
			return MustParse(base + strconv.Itoa(check))
		}
	}
}
