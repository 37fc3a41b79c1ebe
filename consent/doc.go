// Package consent decides, event by event and recipient by recipient, whether
// a recipient may receive an event about a patient.
//
// A decision is a pure function of a Request: the facts of the event, the
// candidate recipient, why the recipient matched (the Basis), the patient's
// directives and the deployment's policy (held by the Decider). It returns a
// Decision: permit or deny, the rule that decided, and any obligations on the
// delivery (for example, send a notification without the clinical document).
//
// Contract for every Decider:
//   - Decide must not block on I/O; everything it needs is in the Request.
//   - An error means "no decision": the caller must not deliver and must retry
//     the event later (fail closed). A Decider never returns Permit with an error.
//   - Decision.Rule names the rule that decided, so that every decision can be
//     explained and audited. It never contains patient data.
//
// This package holds no transport code: no Kafka, no HTTP (a dependency test
// enforces it).
//
// # Directives
//
// A patient, or someone acting for them, records Directives (the admin API's
// JSON form; FHIR R4 Consent through ToFHIR and ConsentFromFHIR):
//
//	kind                  names                        meaning
//	deny-organisation     organisation                 do not share with it
//	deny-role             role                         do not share with any organisation of the role
//	notification-only     organisation or role         share a notification, never documents
//	permit-organisation   organisation [+ categories]  explicitly share with it (see rows 6, 8, 9, and 5 for categories)
//	confidential          -                            share nothing but what Policy.ConfidentialAllow names
//
// Every directive may carry a Period (inclusive at both ends, either end
// open). Policy adds the deployment's part: the sensitive categories
// (sexual-health, mental-health, safeguarding, gender-identity, and any
// ExtraSensitiveCategories) and what a confidential patient still shares.
//
// # Rules
//
// Policy decides a Request by this table, read from the top: the first row
// whose condition holds decides the effect, names its rule in Decision.Rule
// and, for the rows marked (id), names in Decision.DirectiveID the directive
// it applied. Deny rows come first, so a deny overrides every permit
// (deny-overrides); the rows that lift a deny or a restriction say so in
// their own condition. A request that is invalid (see Evaluate) gets an
// error and no decision at all.
//
//	#   condition                                        effect  rule                               obligation
//	1   the Basis is not one of the four known bases     deny    unknown-basis                      -
//	2   the event does not confirm the relationship      deny    relationship-unconfirmed           -
//	    (Relationship: registered-gp and discharge-destination must be named by the event)
//	3   a deny-organisation for the recipient            deny    directive:deny-organisation (id)   -
//	4   a confidential directive, and the request holds  deny    directive:confidential (id)        -
//	    no basis in Policy.ConfidentialAllow; or, with
//	    no such directive, a confidential event and no   deny    or event:confidential           -
//	    basis in Policy.ConfidentialAllow
//	5   the event carries a sensitive category, the      deny    policy:sensitive-category-gp-only  -
//	    recipient is not the registered GP, and no
//	    permit-organisation for the recipient lists that category
//	6   a deny-role for the recipient's role, and no     deny    directive:deny-role (id)           -
//	    permit-organisation for the recipient
//	7   a notification-only for the recipient            permit  directive:notification-only (id)   notification-only
//	    organisation
//	8   a notification-only for the recipient's role,    permit  directive:notification-only (id)   notification-only
//	    and no permit-organisation for the recipient
//	9   a permit-organisation for the recipient          permit  directive:permit-organisation (id) -
//	10  a confidential directive or a confidential       permit  policy:confidential-allowed (id)   -
//	    event (row 4 let it through)
//	11  otherwise                                        permit  relationship-confirmed             -
//
// The words of the table mean exactly this:
//
//   - "a directive" means a directive in force: its Period contains the
//     event's time, and it is not superseded.
//   - Superseded: a directive of the same scope was recorded later
//     (Directive.Recorded). The scope is the kind, the organisation, the role
//     and the set of categories. Only the latest statement of a scope counts,
//     whether or not it is in force: deny-role social-care recorded in
//     January with no end, then deny-role social-care recorded in March for
//     April only, denies social care events of April only: the March
//     statement replaced the January one, for events before it too.
//     Directives of one scope recorded at the same instant are one statement,
//     in force whenever any of them is (so a statement can hold several
//     periods). Kinds never supersede each other: a permit-organisation
//     recorded after a deny-organisation for the same organisation does not
//     lift it (row 3 comes first); to lift a deny, end or remove it.
//   - "for the recipient": a deny-organisation, permit-organisation or
//     notification-only naming the recipient's ODS code; "for the
//     recipient's role": a deny-role or notification-only naming its Role.
//   - A permit-organisation counts for an event (rows 5, 6, 8, 9) only if it
//     has no categories or the event carries at least one of them: "optionally
//     restricted to categories". It lifts role-level rules (rows 6 and 8) and,
//     for the categories it lists, row 5. It never lifts rows 1 to 4 or 7.
//   - Holding a basis: a request holds its own Basis, registered-gp when the
//     event's GP practice is the recipient, and discharge-destination when the
//     event's discharge destination is the recipient; but registered-gp only
//     if the recipient's Role is gp-practice. "The registered GP" in row 5 is
//     a request that holds registered-gp, whatever basis the router asked on.
//   - A confidential event: Event.Confidential, the publisher's own mark
//     that the record is protected (an HL7 v2 PD1-12 protection indicator).
//     It restricts that event exactly as a confidential directive restricts
//     every event of the patient, and like one it is lifted by nothing but
//     Policy.ConfidentialAllow. A decision names the directive when there is
//     one (directive:confidential), else the event (event:confidential).
//   - Sensitive: one of the built-in categories (CategorySexualHealth,
//     CategoryMentalHealth, CategorySafeguarding, CategoryGenderIdentity)
//     or the policy's ExtraSensitiveCategories. Labels are compared exactly
//     (codes are lower-case; an event label that is not a valid code is an
//     error).
//   - (id): when several directives fit the row, the one recorded last, then
//     the lowest ID, is named. The effect does not depend on which.
//
// The notification-only obligation tells the delivery to send the event
// without clinical documents (for a discharge, without the summary). It is
// set on rows 7 and 8 whether or not the event carries a document.
//
// # Time
//
// Periods are judged against the event's time (Event.Time, the CloudEvents
// time), not the time of the decision. A decision is then a pure function of
// the Request, so a retried, replayed or audited decision comes out the same
// however late it is made, and an event is shared or not by the wishes in
// force when it happened. Directives themselves are those loaded when the
// decision is made: a deny recorded after an event happened, with no start
// (the form a "stop sharing" should take), still stops that event if it has
// not yet been routed. Recorded is used only to supersede, never as a start.
// A request without an event time is an error.
//
// # Follow-ups, merges and the re-check at delivery
//
// Three compositions of a Decider answer what one decision cannot:
//
//   - FollowUp decides an event that follows earlier events on the same
//     encounter or care plan (Relation: continues, updates, corrects) given
//     what those did for the recipient (Original): the earlier events'
//     sensitivity categories apply to the follow-up; a correction goes to
//     nobody that did not receive what it corrects
//     (follow-up:original-not-received); an update to nobody that was
//     withheld the earlier events and received none of them
//     (follow-up:original-withheld).
//   - Merged decides for a patient whose record absorbed others: each
//     number's directives decide apart, and a deny from any wins.
//   - Recheck is the decision at the moment of delivery: the request
//     decided again with the directives then; a copy now denied is not
//     delivered, and one routed as a notification stays one.
//
// Each is a pure function of its inputs, checked against the oracle in
// followup_property_test.go.
//
// # FHIR
//
// ToFHIR and ConsentFromFHIR map one patient's directives to one FHIR R4
// Consent.
//
// ToFHIR writes: status active; scope patient-privacy; category LOINC
// 59284-0; patient by NHS number (https://fhir.nhs.uk/Id/nhs-number); policy
// uri PolicyURI and policyRule v3-ActCode OPTIN (the base: share as carehub's
// policy allows; FHIR's invariant ppc-1 wants one of the two); dateTime, the
// latest Recorded; and a root provision, with no type (R4: "not permitted in
// root rule"), whose nested provisions are the directives, one each, with the
// directive's id:
//
//	kind                  nested provision
//	deny-organisation     type deny, actor (role IRCP, reference.identifier ODS code)
//	deny-role             type deny, extension recipient-role (valueCode)
//	notification-only     type deny, class content-class#document, and an actor or a recipient-role
//	permit-organisation   type permit, actor, securityLabel sensitivity-category#<code> per category
//	confidential          type deny and nothing else: deny all, but for the policy
//
// Period is provision.period. Recorded and RecordedBy are the extensions
// directive-recorded (valueDateTime) and directive-recorded-by
// (valueString) under https://carehub.dev/fhir/StructureDefinition/.
//
// ConsentFromFHIR reads that form and the forms EPRs and HL7's own examples
// write, each element with this meaning:
//
//   - policyRule: v3-ActCode OPTIN or OPTINR (or carehub's
//     sharing-policy#direct-care) is an opt-in, a base permit: carehub's
//     policy applies, and the provisions are exceptions to it. OPTOUT or
//     OPTOUTE is an opt-out, a base deny: it becomes a deny-role directive
//     for every role (ids opt-out-<role>), so nothing is shared but what a
//     permit for an organisation lets through, and that still within
//     carehub's policy (the relationship must be confirmed; sensitive
//     categories need a permit that lists them). Another policy rule is
//     refused. Without a policy rule, a root provision's type states the
//     base, and with neither the base is a permit.
//   - policy: a uri other than PolicyURI names rules carehub does not know,
//     and is refused, not ignored; an authority alone is documentation.
//   - The root provision: its period bounds the whole Consent, the base
//     and every nested provision (each nested period is cut to it; one
//     outside it is refused, as it could never apply). A type on it must
//     agree with the policy rule. A root provision that names an actor, a
//     security label or a class (HL7's pkb example) is itself a provision,
//     read as a nested one is.
//   - A provision without a type is an exception to the base: a deny under
//     an opt-in, a permit under an opt-out.
//   - A provision without an id gets a stable generated one: "fhir-" and 16
//     hex digits of a SHA-256 of what it says (kind, organisation, role,
//     categories, period), so the same provision sent again keeps its id;
//     two provisions that say the same thing are one directive.
//   - actor: role v3-ParticipationType IRCP or PRCP (a recipient; any other
//     role is refused); the organisation by identifier in the ODS system, or
//     by a literal reference whose id is an ODS code (Organization/RX1, or an
//     absolute URL ending so, as the ODS FHIR API and Spine Directory Service
//     name organisations; letters taken as upper case, an id of digits only
//     is a local record number). A reference carehub cannot resolve (another
//     server's id, a contained resource, another resource type) is refused.
//     A provision naming several organisations is one directive per
//     organisation (ids <id>.<ODS code> when the provision has an id).
//   - action: the consentaction codes. carehub controls one action,
//     sharing events with a recipient, which access and disclose name. A
//     deny that names access or disclose is a deny of sharing whatever else
//     it names (collect, use, correct, as HL7's notOrg example does): a
//     recipient sent nothing can collect, use or correct nothing, and
//     denying more can only make carehub share less. A permit grants
//     sharing only through access or disclose; its other actions grant
//     nothing carehub does and are left to the systems that hold the
//     record (reading them as a grant to share would share more than was
//     given). A provision whose actions are all collect, use or correct is
//     refused: honouring it would withhold or share what it does not speak
//     of, and ignoring it would pretend to honour it. A code of another
//     system is refused.
//   - securityLabel and class: carehub's sensitivity-category codes; HL7's
//     sensitivity codes, mapped (v3-ActCode PSY, BH, PSYTHPN mental-health;
//     SEX, STD sexual-health; SDV safeguarding; GENDER gender-identity; HIV
//     hiv; ETH, SUD substance-misuse; SPI mental-health and substance-misuse;
//     and the v3-Confidentiality codes PSY, SDV, HIV, ETH likewise); the
//     normal confidentiality levels (v3-Confidentiality N, L, M, U), meaning
//     events without a sensitive category, which is what a permit without
//     categories covers; and in class, content-class#document. Any other
//     label is refused. Categories restrict permits only: a deny with a label
//     is refused (carehub withholds an organisation's events all or
//     nothing), and so is a provision mixing normal and sensitive labels.
//   - patient: by NHS number, which must be the patient addressed; a patient
//     given only otherwise (a literal reference to a record carehub does not
//     hold, a display, a local identifier) is taken to be that patient.
//   - dateTime and the first organization carehub can identify stand in for
//     the recorded extensions of provisions without them (a date alone is
//     the start of that day in the UK).
//
// Refused, saying why: purpose (purposes of use: nothing in an event tells
// one from another), code and data (record types and particular records:
// directives apply to all of a patient's events), dataPeriod, nested
// provisions deeper than one level, modifier extensions, implicitRules, a
// status other than active; actors by role CST or AUT (they select records
// by who holds or wrote them, not who receives them) or naming a person
// (carehub delivers to organisations); a class of resource or media types.
//
// HL7's R4 examples read so (consent/testdata/fhir): basic, notTime, notOrg
// and pkb are accepted; notAuthor, Out, Emergency, grantor (custodian
// actors, purpose of use, a person), notThem, signature (people), notThis
// (one record) and smartonfhir (a resource type) are refused. notTime is
// read as its R4 structure says, an opt-in bounded in time (like basic):
// no directive. Its narrative wants the patient's events of January 2015
// withheld, which its STU3 version wrote as a deny exception with that
// period; in R4 that is a nested provision of type deny with the period,
// which carehub reads as a confidential directive for the period. A period bound given as a date only is the whole of that day
// in UK time. The evaluation of provision.period against the event's time,
// not the time of access, is carehub's reading (see Time).
//
// # Concurrency
//
// Policy, Relationship and the functions of this package keep no state; a
// Policy is safe for concurrent use while nobody changes its fields.
package consent
