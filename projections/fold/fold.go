// Package fold turns a tenant's events into the tenant's configuration. It is the one
// implementation of that fold: the control plane decides commands on it, the projector builds the
// edges' read model from it, and audits replay history with it. It does no I/O; it only decodes
// event payloads and updates a Tenant.
//
// Entities in a Tenant (Token, CertificateAuthority, Revocation, Policy, Hostname) are immutable
// once stored: Apply replaces them instead of changing them, so a reader holding a pointer sees a
// consistent value.
package fold

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// Event is an event of a tenant's stream as the fold needs it.
type Event struct {
	// Type is the full protobuf message name of Data.
	Type string
	// Data is the protobuf encoding of the event.
	Data []byte
	// Revision is the event's revision in the tenant's stream (from 0).
	Revision uint64
	// Position is the event's global position in the event store.
	Position uint64
	// Time is when the event was stored.
	Time time.Time
	// Actor and RequestID come from the event's metadata.
	Actor     string
	RequestID string
}

// Errors returned by Apply.
var (
	// ErrUnknownEventType is returned for an event type this version does not know. The fold refuses
	// to skip it: a configuration missing a fact would be wrong without saying so.
	ErrUnknownEventType = errors.New("fold: unknown event type")
	// ErrInconsistent is returned for an event that contradicts the state (for example an update of a
	// hostname that does not exist, or an event out of revision order).
	ErrInconsistent = errors.New("fold: event inconsistent with state")
)

// Event type names as stored in the event store.
var (
	TypeTenantCreated               = typeName(&eventsv1.TenantCreated{})
	TypeTokenCreated                = typeName(&eventsv1.TokenCreated{})
	TypeTokenDeleted                = typeName(&eventsv1.TokenDeleted{})
	TypeCertificateAuthorityAdded   = typeName(&eventsv1.CertificateAuthorityAdded{})
	TypeCertificateAuthorityRemoved = typeName(&eventsv1.CertificateAuthorityRemoved{})
	TypeRevocationAdded             = typeName(&eventsv1.RevocationAdded{})
	TypeRevocationRemoved           = typeName(&eventsv1.RevocationRemoved{})
	TypePolicyCreated               = typeName(&eventsv1.PolicyCreated{})
	TypePolicyUpdated               = typeName(&eventsv1.PolicyUpdated{})
	TypePolicyDeleted               = typeName(&eventsv1.PolicyDeleted{})
	TypeHostnameCreated             = typeName(&eventsv1.HostnameCreated{})
	TypeHostnameUpdated             = typeName(&eventsv1.HostnameUpdated{})
	TypeHostnameDeleted             = typeName(&eventsv1.HostnameDeleted{})
	TypeHostnameReserved            = typeName(&eventsv1.HostnameReserved{})
	TypeHostnameReleased            = typeName(&eventsv1.HostnameReleased{})
)

func typeName(m proto.Message) string { return string(m.ProtoReflect().Descriptor().FullName()) }

// TypeOf returns the event type name under which m is stored.
func TypeOf(m proto.Message) string { return typeName(m) }

// TenantStream is the name of the stream holding every event of tenant id.
func TenantStream(tenantID string) string { return "tenant-" + tenantID }

// TenantStreamPrefix is the common prefix of all tenant streams.
const TenantStreamPrefix = "tenant-"

// HostnameStream is the name of the stream holding the reservations of hostname.
func HostnameStream(hostname string) string { return "hostname-" + hostname }

// Tenant is one tenant's configuration as of Revision.
type Tenant struct {
	ID          string
	DisplayName string
	CreateTime  time.Time
	// Exists is false until TenantCreated has been applied.
	Exists bool
	// Revision is the revision of the last applied event of the tenant's stream; Position its
	// global position; Time its time.
	Revision uint64
	Position uint64
	Time     time.Time

	// The maps below are Apply's: other code reads them and never writes them, as Apply keeps
	// indexes of them (to copy a Tenant, use Clone).
	Tokens      map[string]*Token
	CAs         map[string]*CertificateAuthority
	Revocations map[RevocationKey]*Revocation
	Policies    map[string]*Policy
	Hostnames   map[string]*Hostname
	// Requests maps a request id to the first resource its request created, for idempotent
	// retries; MoreRequests holds the further ones of requests that created several (batches).
	// RequestRefs gives them together.
	Requests     map[string]Ref
	MoreRequests map[string][]Ref

	// Indexes kept by Apply (and undone by Rollback) once Index made them, nil before: revsByCA
	// the revocations under each CA (by revocation id); hostsByCA and hostsByPolicy the hostnames
	// that name each CA and each policy.
	revsByCA      map[string]map[string]*Revocation
	hostsByCA     map[string]map[string]struct{}
	hostsByPolicy map[string]map[string]struct{}

	journal *journal
}

// Kind names a resource type.
type Kind uint8

// Resource kinds.
const (
	KindTenant Kind = iota + 1
	KindToken
	KindCertificateAuthority
	KindRevocation
	KindPolicy
	KindHostname
)

// Ref names a resource of a tenant, and for the resources of Tenant.Requests the request that
// created it.
type Ref struct {
	Kind Kind
	// ID is the resource's id; for revocations, Parent is the CA's id.
	ID     string
	Parent string
	// Digest is the request digest that the creating event recorded (its request_digest field, a
	// SHA-256 as a string of 32 bytes): what tells a repeat of the request from another request
	// with the same request id. Empty for events without one (written without a request id, or by
	// versions before the field existed).
	Digest string
}

// Token is an API token.
type Token struct {
	ID           string
	DisplayName  string
	Role         eventsv1.Role
	SecretSHA256 []byte
	CreateTime   time.Time
}

// CertificateAuthority is a CA certificate of the tenant.
type CertificateAuthority struct {
	ID                string
	DisplayName       string
	DER               []byte
	FingerprintSHA256 string
	CreateTime        time.Time
	// Revision is the stream revision of the event that last changed the CA (its etag).
	Revision uint64
}

// RevocationKey identifies a revocation: the CA's id and the revocation's id.
type RevocationKey struct{ CA, ID string }

// Revocation revokes certificates under a CA by serial number or by fingerprint.
type Revocation struct {
	ID                string
	CA                string
	SerialNumber      string
	FingerprintSHA256 string
	Reason            string
	CreateTime        time.Time
}

// Rule is one rule of a policy.
type Rule struct {
	Name       string
	Action     eventsv1.Action
	Expression string
}

// Policy is an ordered list of rules.
type Policy struct {
	ID          string
	DisplayName string
	Rules       []Rule
	CreateTime  time.Time
	UpdateTime  time.Time
	Revision    uint64
}

// Hostname is a custom hostname of the tenant.
type Hostname struct {
	Name                    string
	OriginURL               string
	Mode                    eventsv1.MtlsMode
	CertificateAuthorityIDs []string
	RejectInHandshake       bool
	PolicyID                string
	State                   eventsv1.HostnameState
	CreateTime              time.Time
	UpdateTime              time.Time
	Revision                uint64
	// ReservationEventID is the id of the HostnameReserved event the hostname was created under
	// (HostnameCreated.reservation_event_id); empty for hostnames created before it was recorded.
	ReservationEventID string
}

// NewTenant returns the empty state of tenant id, before its first event.
func NewTenant(id string) *Tenant {
	return &Tenant{
		ID:           id,
		Tokens:       map[string]*Token{},
		CAs:          map[string]*CertificateAuthority{},
		Revocations:  map[RevocationKey]*Revocation{},
		Policies:     map[string]*Policy{},
		Hostnames:    map[string]*Hostname{},
		Requests:     map[string]Ref{},
		MoreRequests: map[string][]Ref{},
	}
}

// Index makes t keep indexes of its revocations by CA and of its hostnames by CA and by policy
// from now on, so that the questions a large tenant is asked about one CA or policy are answered
// without reading every revocation or hostname: AffectedHostnames, HostnameConfig's revocations,
// RevocationsUnder. The projector, which asks them for every event, and the control plane keep
// them. Keeping them costs Apply about a microsecond a hostname event and Clone about as much as
// copying the maps again, which a replay that asks each once (an audit's) is better off without.
// A Rollback past Index drops them.
func (t *Tenant) Index() {
	if t.revsByCA != nil {
		return
	}
	t.revsByCA, t.hostsByCA, t.hostsByPolicy = indexesOf(t)
	if t.journal != nil {
		t.journal.undo = append(t.journal.undo, func() { t.revsByCA, t.hostsByCA, t.hostsByPolicy = nil, nil, nil })
	}
}

// Apply folds ev into t. Events must come in revision order: the first event has revision 0 and
// every later one the next revision. On error t is unchanged.
func Apply(t *Tenant, ev Event) error {
	if t.Exists && ev.Revision != t.Revision+1 || !t.Exists && ev.Revision != 0 {
		return fmt.Errorf("%w: event revision %d after revision %d (exists %v)", ErrInconsistent, ev.Revision, t.Revision, t.Exists)
	}
	if err := apply(t, ev); err != nil {
		return fmt.Errorf("fold: tenant %q revision %d (%s): %w", t.ID, ev.Revision, ev.Type, err)
	}
	t.saveHeader()
	t.Revision, t.Position, t.Time = ev.Revision, ev.Position, ev.Time
	return nil
}

func apply(t *Tenant, ev Event) error {
	if !t.Exists && ev.Type != TypeTenantCreated {
		return fmt.Errorf("%w: first event must be %s", ErrInconsistent, TypeTenantCreated)
	}
	switch ev.Type {
	case TypeTenantCreated:
		var m eventsv1.TenantCreated
		if err := decode(ev, &m); err != nil {
			return err
		}
		if t.Exists {
			return fmt.Errorf("%w: tenant already created", ErrInconsistent)
		}
		if m.GetTenantId() != t.ID {
			return fmt.Errorf("%w: tenant id %q in a stream of tenant %q", ErrInconsistent, m.GetTenantId(), t.ID)
		}
		t.saveHeader()
		t.Exists, t.DisplayName, t.CreateTime = true, m.GetDisplayName(), ev.Time
		t.request(ev, Ref{Kind: KindTenant, ID: t.ID, Digest: string(m.GetRequestDigest())})
	case TypeTokenCreated:
		var m eventsv1.TokenCreated
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Tokens[m.GetTokenId()]; ok {
			return fmt.Errorf("%w: token %q exists", ErrInconsistent, m.GetTokenId())
		}
		setEntry(t, t.Tokens, m.GetTokenId(), &Token{ID: m.GetTokenId(), DisplayName: m.GetDisplayName(), Role: m.GetRole(), SecretSHA256: m.GetSecretSha256(), CreateTime: ev.Time})
		t.request(ev, Ref{Kind: KindToken, ID: m.GetTokenId(), Digest: string(m.GetRequestDigest())})
	case TypeTokenDeleted:
		var m eventsv1.TokenDeleted
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Tokens[m.GetTokenId()]; !ok {
			return fmt.Errorf("%w: token %q does not exist", ErrInconsistent, m.GetTokenId())
		}
		setEntry(t, t.Tokens, m.GetTokenId(), nil)
	case TypeCertificateAuthorityAdded:
		var m eventsv1.CertificateAuthorityAdded
		if err := decode(ev, &m); err != nil {
			return err
		}
		id := m.GetCertificateAuthorityId()
		if _, ok := t.CAs[id]; ok {
			return fmt.Errorf("%w: certificate authority %q exists", ErrInconsistent, id)
		}
		setEntry(t, t.CAs, id, &CertificateAuthority{ID: id, DisplayName: m.GetDisplayName(), DER: m.GetCertificateDer(), FingerprintSHA256: m.GetFingerprintSha256(), CreateTime: ev.Time, Revision: ev.Revision})
		t.request(ev, Ref{Kind: KindCertificateAuthority, ID: id, Digest: string(m.GetRequestDigest())})
	case TypeCertificateAuthorityRemoved:
		var m eventsv1.CertificateAuthorityRemoved
		if err := decode(ev, &m); err != nil {
			return err
		}
		id := m.GetCertificateAuthorityId()
		if _, ok := t.CAs[id]; !ok {
			return fmt.Errorf("%w: certificate authority %q does not exist", ErrInconsistent, id)
		}
		setEntry(t, t.CAs, id, nil)
		var revoked []string
		for rid := range t.RevocationsUnder(id) {
			revoked = append(revoked, rid)
		}
		for _, rid := range revoked {
			setRevocation(t, RevocationKey{CA: id, ID: rid}, nil)
		}
	case TypeRevocationAdded:
		var m eventsv1.RevocationAdded
		if err := decode(ev, &m); err != nil {
			return err
		}
		k := RevocationKey{CA: m.GetCertificateAuthorityId(), ID: m.GetRevocationId()}
		if _, ok := t.CAs[k.CA]; !ok {
			return fmt.Errorf("%w: revocation under unknown certificate authority %q", ErrInconsistent, k.CA)
		}
		if _, ok := t.Revocations[k]; ok {
			return fmt.Errorf("%w: revocation %q exists", ErrInconsistent, k.ID)
		}
		setRevocation(t, k, &Revocation{ID: k.ID, CA: k.CA, SerialNumber: m.GetSerialNumber(), FingerprintSHA256: m.GetFingerprintSha256(), Reason: m.GetReason(), CreateTime: ev.Time})
		t.request(ev, Ref{Kind: KindRevocation, ID: k.ID, Parent: k.CA, Digest: string(m.GetRequestDigest())})
	case TypeRevocationRemoved:
		var m eventsv1.RevocationRemoved
		if err := decode(ev, &m); err != nil {
			return err
		}
		k := RevocationKey{CA: m.GetCertificateAuthorityId(), ID: m.GetRevocationId()}
		if _, ok := t.Revocations[k]; !ok {
			return fmt.Errorf("%w: revocation %q does not exist", ErrInconsistent, k.ID)
		}
		setRevocation(t, k, nil)
	case TypePolicyCreated:
		var m eventsv1.PolicyCreated
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Policies[m.GetPolicyId()]; ok {
			return fmt.Errorf("%w: policy %q exists", ErrInconsistent, m.GetPolicyId())
		}
		setEntry(t, t.Policies, m.GetPolicyId(), &Policy{ID: m.GetPolicyId(), DisplayName: m.GetDisplayName(), Rules: rules(m.GetRules()), CreateTime: ev.Time, UpdateTime: ev.Time, Revision: ev.Revision})
		t.request(ev, Ref{Kind: KindPolicy, ID: m.GetPolicyId(), Digest: string(m.GetRequestDigest())})
	case TypePolicyUpdated:
		var m eventsv1.PolicyUpdated
		if err := decode(ev, &m); err != nil {
			return err
		}
		old, ok := t.Policies[m.GetPolicyId()]
		if !ok {
			return fmt.Errorf("%w: policy %q does not exist", ErrInconsistent, m.GetPolicyId())
		}
		setEntry(t, t.Policies, m.GetPolicyId(), &Policy{ID: old.ID, DisplayName: m.GetDisplayName(), Rules: rules(m.GetRules()), CreateTime: old.CreateTime, UpdateTime: ev.Time, Revision: ev.Revision})
	case TypePolicyDeleted:
		var m eventsv1.PolicyDeleted
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Policies[m.GetPolicyId()]; !ok {
			return fmt.Errorf("%w: policy %q does not exist", ErrInconsistent, m.GetPolicyId())
		}
		setEntry(t, t.Policies, m.GetPolicyId(), nil)
	case TypeHostnameCreated:
		var m eventsv1.HostnameCreated
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Hostnames[m.GetHostname()]; ok {
			return fmt.Errorf("%w: hostname %q exists", ErrInconsistent, m.GetHostname())
		}
		h := hostname(m.GetHostname(), m.GetOriginUrl(), m.GetMtls(), m.GetPolicyId(), m.GetState())
		h.CreateTime, h.UpdateTime, h.Revision = ev.Time, ev.Time, ev.Revision
		h.ReservationEventID = m.GetReservationEventId()
		setHostname(t, h.Name, h)
		t.request(ev, Ref{Kind: KindHostname, ID: h.Name, Digest: string(m.GetRequestDigest())})
	case TypeHostnameUpdated:
		var m eventsv1.HostnameUpdated
		if err := decode(ev, &m); err != nil {
			return err
		}
		old, ok := t.Hostnames[m.GetHostname()]
		if !ok {
			return fmt.Errorf("%w: hostname %q does not exist", ErrInconsistent, m.GetHostname())
		}
		h := hostname(m.GetHostname(), m.GetOriginUrl(), m.GetMtls(), m.GetPolicyId(), m.GetState())
		h.CreateTime, h.UpdateTime, h.Revision = old.CreateTime, ev.Time, ev.Revision
		h.ReservationEventID = old.ReservationEventID
		setHostname(t, h.Name, h)
	case TypeHostnameDeleted:
		var m eventsv1.HostnameDeleted
		if err := decode(ev, &m); err != nil {
			return err
		}
		if _, ok := t.Hostnames[m.GetHostname()]; !ok {
			return fmt.Errorf("%w: hostname %q does not exist", ErrInconsistent, m.GetHostname())
		}
		setHostname(t, m.GetHostname(), nil)
	default:
		return fmt.Errorf("%w: %q", ErrUnknownEventType, ev.Type)
	}
	return nil
}

func decode(ev Event, m proto.Message) error {
	if err := proto.Unmarshal(ev.Data, m); err != nil {
		return fmt.Errorf("decode %s: %w", ev.Type, err)
	}
	return nil
}

func rules(in []*eventsv1.PolicyRule) []Rule {
	out := make([]Rule, len(in))
	for i, r := range in {
		out[i] = Rule{Name: r.GetName(), Action: r.GetAction(), Expression: r.GetExpression()}
	}
	return out
}

func hostname(name, origin string, m *eventsv1.MtlsSettings, policyID string, state eventsv1.HostnameState) *Hostname {
	return &Hostname{
		Name:                    name,
		OriginURL:               origin,
		Mode:                    m.GetMode(),
		CertificateAuthorityIDs: m.GetCertificateAuthorityIds(), // the decoded message is not kept: no copy needed
		RejectInHandshake:       m.GetRejectInHandshake(),
		PolicyID:                policyID,
		State:                   state,
	}
}

func (t *Tenant) request(ev Event, r Ref) {
	id := ev.RequestID
	if id == "" {
		return
	}
	if _, had := t.Requests[id]; !had {
		t.Requests[id] = r
		if t.journal != nil {
			t.journal.undo = append(t.journal.undo, func() { delete(t.Requests, id) })
		}
		return
	}
	old, had := t.MoreRequests[id]
	if t.journal != nil {
		t.journal.undo = append(t.journal.undo, func() {
			if had {
				t.MoreRequests[id] = old
			} else {
				delete(t.MoreRequests, id)
			}
		})
	}
	t.MoreRequests[id] = append(old[:len(old):len(old)], r)
}

// RequestRefs returns the resources that request id created, in order (nil when none).
func (t *Tenant) RequestRefs(id string) []Ref {
	first, ok := t.Requests[id]
	if !ok || id == "" {
		return nil
	}
	return append([]Ref{first}, t.MoreRequests[id]...)
}

// indexesOf derives the indexes of t's revocations and hostnames from its maps.
func indexesOf(t *Tenant) (revsByCA map[string]map[string]*Revocation, hostsByCA, hostsByPolicy map[string]map[string]struct{}) {
	revsByCA = map[string]map[string]*Revocation{}
	for k, r := range t.Revocations {
		putIndex(revsByCA, k.CA, k.ID, r, true)
	}
	hostsByCA, hostsByPolicy = map[string]map[string]struct{}{}, map[string]map[string]struct{}{}
	for name, h := range t.Hostnames {
		for _, ca := range h.CertificateAuthorityIDs {
			putIndex(hostsByCA, ca, name, struct{}{}, true)
		}
		putIndex(hostsByPolicy, h.PolicyID, name, struct{}{}, true)
	}
	return revsByCA, hostsByCA, hostsByPolicy
}

// RevocationsUnder returns the revocations filed under the CA ca, by revocation id, in no order:
// t.Revocations' entries of that CA, read from the index when t keeps one (Index), from every
// revocation otherwise.
func (t *Tenant) RevocationsUnder(ca string) iter.Seq2[string, *Revocation] {
	if t.revsByCA != nil {
		return maps.All(t.revsByCA[ca])
	}
	return func(yield func(string, *Revocation) bool) {
		for k, r := range t.Revocations {
			if k.CA == ca && !yield(k.ID, r) {
				return
			}
		}
	}
}

// setRevocation sets t.Revocations[k] to r (deleting it when r is nil) and keeps t.revsByCA, if t
// has it.
func setRevocation(t *Tenant, k RevocationKey, r *Revocation) {
	setEntry(t, t.Revocations, k, r)
	setIndex(t, &t.revsByCA, k.CA, k.ID, r, r != nil)
}

// setHostname sets t.Hostnames[name] to h (deleting it when h is nil) and keeps t.hostsByCA and
// t.hostsByPolicy, if t has them.
func setHostname(t *Tenant, name string, h *Hostname) {
	if t.hostsByCA == nil {
		setEntry(t, t.Hostnames, name, h)
		return
	}
	old := t.Hostnames[name]
	if old != nil && h != nil && old.PolicyID == h.PolicyID && slices.Equal(old.CertificateAuthorityIDs, h.CertificateAuthorityIDs) {
		setEntry(t, t.Hostnames, name, h) // the same CAs and policy: the index stays
		return
	}
	if old != nil {
		for _, ca := range old.CertificateAuthorityIDs {
			setIndex(t, &t.hostsByCA, ca, name, struct{}{}, false)
		}
		setIndex(t, &t.hostsByPolicy, old.PolicyID, name, struct{}{}, false)
	}
	if h != nil {
		for _, ca := range h.CertificateAuthorityIDs {
			setIndex(t, &t.hostsByCA, ca, name, struct{}{}, true)
		}
		setIndex(t, &t.hostsByPolicy, h.PolicyID, name, struct{}{}, true)
	}
	setEntry(t, t.Hostnames, name, h)
}

// setIndex sets (add) or deletes (!add) (*idx)[outer][key], and records how to undo it in t's
// journal. A nil index is not kept: it is left nil.
func setIndex[V any](t *Tenant, idx *map[string]map[string]V, outer, key string, v V, add bool) {
	m := *idx
	if m == nil {
		return
	}
	old, had := m[outer][key]
	if !add && !had {
		return
	}
	if t.journal != nil {
		t.journal.undo = append(t.journal.undo, func() { putIndex(m, outer, key, old, had) })
	}
	putIndex(m, outer, key, v, add)
}

// putIndex sets (add) or deletes (!add) m[outer][key], creating an inner map as it fills and
// dropping it once empty.
func putIndex[V any](m map[string]map[string]V, outer, key string, v V, add bool) {
	inner := m[outer]
	if !add {
		delete(inner, key)
		if len(inner) == 0 {
			delete(m, outer)
		}
		return
	}
	if inner == nil {
		inner = map[string]V{}
		m[outer] = inner
	}
	inner[key] = v
}

// Clone returns a copy of t that Apply can fold further without changing t: its maps and indexes
// are copied, its entities shared (Apply replaces them rather than changing them). A recording
// begun on t (Begin) is not copied.
func (t *Tenant) Clone() *Tenant {
	out := *t
	out.journal = nil
	out.Tokens = maps.Clone(t.Tokens)
	out.CAs = maps.Clone(t.CAs)
	out.Revocations = maps.Clone(t.Revocations)
	out.Policies = maps.Clone(t.Policies)
	out.Hostnames = maps.Clone(t.Hostnames)
	out.Requests = maps.Clone(t.Requests)
	out.MoreRequests = maps.Clone(t.MoreRequests)
	out.revsByCA = cloneIndex(t.revsByCA)
	out.hostsByCA = cloneIndex(t.hostsByCA)
	out.hostsByPolicy = cloneIndex(t.hostsByPolicy)
	return &out
}

// cloneIndex copies an index and its inner maps.
func cloneIndex[V any](idx map[string]map[string]V) map[string]map[string]V {
	if idx == nil {
		return nil
	}
	out := make(map[string]map[string]V, len(idx))
	for k, inner := range idx {
		out[k] = maps.Clone(inner)
	}
	return out
}

// setEntry sets m[k] to v (deleting it when v is nil), recording the previous value in t's journal.
func setEntry[K comparable, V any](t *Tenant, m map[K]*V, k K, v *V) {
	if t.journal != nil {
		old, had := m[k]
		t.journal.undo = append(t.journal.undo, func() {
			if had {
				m[k] = old
			} else {
				delete(m, k)
			}
		})
	}
	if v == nil {
		delete(m, k)
	} else {
		m[k] = v
	}
}
