// Package patientlist reads the patient lists recipients subscribe with: a
// care home's residents, a community team's caseload, a hospice's patients.
// A recipient with a patient-list subscription receives the events of every
// patient on its list (consent still decides each one).
//
// A list is a UTF-8 text file with one NHS number per line, as people write
// them: "9434765919", "943 476 5919" or "943-476-5919". Blank lines and
// lines starting with '#' are ignored; a UTF-8 byte order mark and CRLF line
// ends (a spreadsheet's export) are accepted. A number may appear twice.
// Anything else on a line is an error, reported with its line number and
// never with the line's content: a list is patient data.
//
// ReadFile and Parse return the numbers; the hub keeps only their keyed
// pseudonyms (a Set, built by the recipient directory), never the numbers
// themselves.
package patientlist
