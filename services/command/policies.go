package command

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/emptypb"

	"guestlist.dev/edge/policy"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// PolicyServer implements guestlist.v1.PolicyService.
type PolicyServer struct {
	guestlistv1.UnimplementedPolicyServiceServer
	s *Service
}

// Policies returns the PolicyService implementation.
func (s *Service) Policies() *PolicyServer { return &PolicyServer{s: s} }

// checkRules validates rules as the edge will run them: at least one, unique names, and every
// expression compiles to a bool in the edge's CEL environment. Violations name field+"[i]...".
func checkRules(field string, rules []*guestlistv1.Rule) ([]*eventsv1.PolicyRule, error) {
	if len(rules) == 0 {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: "at least one rule is required"})
	}
	var violations []apistatus.Violation
	seen := map[string]int{}
	compiled := make([]policy.Rule, len(rules))
	out := make([]*eventsv1.PolicyRule, len(rules))
	for i, r := range rules {
		if j, dup := seen[r.GetName()]; dup {
			violations = append(violations, apistatus.Violation{Field: fmt.Sprintf("%s[%d].name", field, i), Reason: fmt.Sprintf("duplicate rule name %q (also rules[%d])", r.GetName(), j)})
		}
		seen[r.GetName()] = i
		action := policy.Allow
		if r.GetAction() == guestlistv1.Action_ACTION_DENY {
			action = policy.Deny
		}
		compiled[i] = policy.Rule{Name: r.GetName(), Action: action, Expression: r.GetExpression()}
		out[i] = &eventsv1.PolicyRule{Name: r.GetName(), Action: eventsv1.Action(r.GetAction()), Expression: r.GetExpression()}
	}
	if len(violations) > 0 {
		return nil, apistatus.InvalidArgument(violations...)
	}
	if _, err := policy.Compile(compiled); err != nil {
		var ce *policy.CompileError
		if errors.As(err, &ce) {
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "policy." + ce.FieldPath(), Reason: ce.Error()})
		}
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: err.Error()})
	}
	return out, nil
}

// CreatePolicy implements guestlistv1.PolicyServiceServer.
func (ps *PolicyServer) CreatePolicy(ctx context.Context, req *guestlistv1.CreatePolicyRequest) (*guestlistv1.Policy, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	if err := checkText("policy.display_name", req.GetPolicy().GetDisplayName()); err != nil {
		return nil, err
	}
	rules, err := checkRules("policy.rules", req.GetPolicy().GetRules())
	if err != nil {
		return nil, err
	}
	id := req.GetPolicyId()
	if id == "" {
		id = newID("policy-")
	}
	var digest []byte
	if req.GetRequestId() != "" {
		digest = policyDigest(req.GetPolicyId(), req.GetPolicy().GetDisplayName(), rules)
	}
	res, err := ps.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if ref, ok, err := replayOf(st, req.GetRequestId(), fold.KindPolicy, "policy", "", req.GetPolicyId(), digest); err != nil || ok {
			return decision{result: policyResult(ref.ID)}, err
		}
		if _, ok := st.Policies[id]; ok {
			return decision{}, apistatus.AlreadyExists("policy", id)
		}
		return decision{
			events: []protoMessage{&eventsv1.PolicyCreated{PolicyId: id, DisplayName: req.GetPolicy().GetDisplayName(), Rules: rules, RequestDigest: digest}},
			result: policyResult(id),
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.Policy), nil
}

func policyResult(id string) func(*fold.Tenant) (any, error) {
	return func(st *fold.Tenant) (any, error) {
		p, ok := st.Policies[id]
		if !ok {
			return nil, apistatus.NotFound("policy", id)
		}
		return renderPolicy(p), nil
	}
}

// GetPolicy implements guestlistv1.PolicyServiceServer.
func (ps *PolicyServer) GetPolicy(ctx context.Context, req *guestlistv1.GetPolicyRequest) (*guestlistv1.Policy, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	var out *guestlistv1.Policy
	err := ps.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		r, err := policyResult(req.GetPolicyId())(st)
		if err == nil {
			out = r.(*guestlistv1.Policy)
		}
		return err
	})
	return out, err
}

// ListPolicies implements guestlistv1.PolicyServiceServer.
func (ps *PolicyServer) ListPolicies(ctx context.Context, req *guestlistv1.ListPoliciesRequest) (*guestlistv1.ListPoliciesResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	out := &guestlistv1.ListPoliciesResponse{}
	err := ps.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		keys, next, err := page(st.Policies, "policies/"+req.GetTenantId(), req.GetPageToken(), req.GetPageSize())
		for _, k := range keys {
			out.Policies = append(out.Policies, renderPolicy(st.Policies[k]))
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// UpdatePolicy implements guestlistv1.PolicyServiceServer. An update that would leave the policy
// as it is writes nothing and answers the policy as it stands, etag unchanged.
func (ps *PolicyServer) UpdatePolicy(ctx context.Context, req *guestlistv1.UpdatePolicyRequest) (*guestlistv1.Policy, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	id := req.GetPolicy().GetPolicyId()
	if id == "" {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "policy.policy_id", Reason: "required"})
	}
	setName, setRules := true, true
	if paths := req.GetUpdateMask().GetPaths(); len(paths) > 0 {
		setName, setRules = false, false
		for i, path := range paths {
			switch maskPath(path) {
			case "display_name":
				setName = true
			case "rules":
				setRules = true
			case "policy_id", "etag":
				// The id and the etag say which version of what to update; they are not changed.
			default:
				return nil, apistatus.InvalidArgument(apistatus.Violation{Field: fmt.Sprintf("update_mask.paths[%d]", i), Reason: fmt.Sprintf("%q cannot be updated; use display_name or rules", path)})
			}
		}
	}
	if setName {
		if err := checkText("policy.display_name", req.GetPolicy().GetDisplayName()); err != nil {
			return nil, err
		}
	}
	var rules []*eventsv1.PolicyRule
	if setRules {
		if rules, err = checkRules("policy.rules", req.GetPolicy().GetRules()); err != nil {
			return nil, err
		}
	}
	res, err := ps.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		old, ok := st.Policies[id]
		if !ok {
			return decision{}, apistatus.NotFound("policy", id)
		}
		if err := checkEtag("policy", id, req.GetPolicy().GetEtag(), old.Revision); err != nil {
			return decision{}, err
		}
		ev := &eventsv1.PolicyUpdated{PolicyId: id, DisplayName: old.DisplayName, Rules: rules}
		if setName {
			ev.DisplayName = req.GetPolicy().GetDisplayName()
		}
		if !setRules {
			for _, r := range old.Rules {
				ev.Rules = append(ev.Rules, &eventsv1.PolicyRule{Name: r.Name, Action: r.Action, Expression: r.Expression})
			}
		}
		if policyUnchanged(old, ev) {
			return decision{result: policyResult(id)}, nil
		}
		return decision{events: []protoMessage{ev}, result: policyResult(id)}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.Policy), nil
}

// policyUnchanged reports whether ev would leave policy p as it is; such an update writes no
// event (see hostnameUnchanged).
func policyUnchanged(p *fold.Policy, ev *eventsv1.PolicyUpdated) bool {
	if ev.GetDisplayName() != p.DisplayName || len(ev.GetRules()) != len(p.Rules) {
		return false
	}
	for i, r := range ev.GetRules() {
		if o := p.Rules[i]; r.GetName() != o.Name || r.GetAction() != o.Action || r.GetExpression() != o.Expression {
			return false
		}
	}
	return true
}

// DeletePolicy implements guestlistv1.PolicyServiceServer.
func (ps *PolicyServer) DeletePolicy(ctx context.Context, req *guestlistv1.DeletePolicyRequest) (*emptypb.Empty, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	id := req.GetPolicyId()
	_, err = ps.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		old, ok := st.Policies[id]
		if !ok {
			return decision{}, apistatus.NotFound("policy", id)
		}
		if err := checkEtag("policy", id, req.GetEtag(), old.Revision); err != nil {
			return decision{}, err
		}
		for _, h := range sortedHostnames(st) {
			if h.PolicyID == id {
				return decision{}, apistatus.FailedPrecondition("policy_id", "policy is used by hostname "+h.Name+"; change the hostname first")
			}
		}
		return decision{events: []protoMessage{&eventsv1.PolicyDeleted{PolicyId: id}}, result: emptyResult}, nil
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
