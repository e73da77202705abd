// SOAP (optzoo/optimizer/soap.py) on the tensors it does not rotate (1-D weights without precondition_1d, and
// weights whose every dimension is over max_precondition_dim): there SOAP is Adam, in pytorch-optimizer's order,
// one torch operation a line with torch's rounding (lerp and add-with-alpha fused multiply-adds, api.h). The square
// root between the two rules is torch's own (torch._foreach_sqrt): torch takes it from MKL's vector library, which
// does not always round as std::sqrt does.
//   soap_moments: m.lerp_(g, 1-b1); v.lerp_(g*g, 1-b2) (the weight is not written).
//     hyper = [beta1, beta2]; scalars: 1 - beta1, 1 - beta2 (float64, then float32).
//   soap_apply, given d = sqrt(v) as the "gradient" and m as the state:
//     w.add_(m / (d + eps), alpha=-step); w.mul_(1 - wd*lr) (a decay by 1.0, wd = 0, leaves every value as it is).
//     hyper = [epsilon]; aux = the step size lr*sqrt(1-beta2^k)/(1-beta1^k) (k = t - 1), one per tensor.
//     scalars: epsilon, -step size, 1 - wd*lr (float64, then float32).
#include "api.h"

namespace optzoo {
namespace {

void prepare_soap_moments(const double* h, double, double, int64_t, const double*, float* sc) {
    sc[0] = f32(1.0 - h[0]);
    sc[1] = f32(1.0 - h[1]);
}

const char* check_soap_moments(const double*, int n, uint32_t present) {
    return n == 2 && present == 3u ? nullptr : "soap_moments takes 2 hyperparameters and two states";
}

struct SoapMomentsRule {
    static inline void elem(const float* sc, float&, float g, float* mean, float* var, float*, float*, int64_t i) {
        mean[i] = torch_lerp(mean[i], g, sc[0]);
        var[i] = torch_lerp(var[i], g * g, sc[1]);
    }
};

void prepare_soap_apply(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    sc[0] = f32(h[0]);
    sc[1] = f32(-aux[0]);
    sc[2] = f32(1.0 - wd * lr);
}

const char* check_soap_apply(const double*, int n, uint32_t present) {
    return n == 1 && present == 1u ? nullptr : "soap_apply takes 1 hyperparameter and one state";
}

struct SoapApplyRule {
    static inline void elem(const float* sc, float& w, float root, float* mean, float*, float*, float*, int64_t i) {
        w = torch_add_alpha(w, mean[i] / (root + sc[0]), sc[1]) * sc[2];
    }
};

const RuleDesc soap_moments{"soap_moments", 2, 0u, 0u, false, false, check_soap_moments, prepare_soap_moments,
                            elementwise<SoapMomentsRule>};
OPTZOO_RULE(soap_moments);
const RuleDesc soap_apply{"soap_apply", 1, 0u, 0u, false, false, check_soap_apply, prepare_soap_apply,
                          elementwise<SoapApplyRule>, 1};
OPTZOO_RULE(soap_apply);

}  // namespace
}  // namespace optzoo
