// optzoo native core: the Python entry points. Checks and unpacks a whole optimizer step (lists of weights,
// gradients and states as the Python optimizer holds them), prepares each tensor's scalars and runs the rule
// once over all tensors. Any tensor the kernels cannot take (CUDA, non-contiguous, float64, sparse, a state of
// an unexpected shape...) makes the call return False before anything is written: the caller then takes the
// torch path, which also reports bad input with a clear error.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "api.h"

namespace py = pybind11;

namespace optzoo {

static std::vector<const RuleDesc*>& registry() {
    static std::vector<const RuleDesc*> rules;
    return rules;
}

int register_rule(const RuleDesc* desc) {
    registry().push_back(desc);
    return static_cast<int>(registry().size()) - 1;
}

const RuleDesc* rule_by_id(int id) {
    return id >= 0 && id < rule_count() ? registry()[id] : nullptr;
}

int rule_id(const char* name) {
    for (int i = 0; i < rule_count(); ++i)
        if (std::string(registry()[i]->name) == name) return i;
    return -1;
}

int rule_count() { return static_cast<int>(registry().size()); }

namespace {

const at::Tensor* as_tensor(PyObject* obj) {
    if (!THPVariable_Check(obj)) return nullptr;
    return &THPVariable_Unpack(obj);
}

// A CPU, dense, contiguous tensor of `dtype` with `numel` elements.
bool plain(const at::Tensor& t, at::ScalarType dtype, int64_t numel) {
    return t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype && t.numel() == numel &&
           t.is_contiguous() && !t.is_neg() && !t.is_conj();
}

// ------------------------------------------------------------------------------------------ input checks
// Bad input the torch path would reject too raises a ValueError here (pybind11 turns py::value_error into one)
// instead of returning False. Messages name tensors by their position in the call as "@<i>"; the Python caller
// (Optimizer._native_call) replaces each with the optimizer's index of that tensor.
enum Role : int { kWeightRole, kLowPrecisionRole, kMasterRole, kGradRole, kStateRole };

struct Region {
    uintptr_t begin, end;  // [begin, end) bytes
    int32_t tensor;
    int role;
    int slot;              // the state slot (kStateRole)
    bool written() const { return role != kGradRole; }
};

std::string describe(const Region& r) {
    const std::string who = "@" + std::to_string(r.tensor);
    switch (r.role) {
        case kWeightRole: return "the weight of " + who;
        case kLowPrecisionRole: return "the weight of " + who;
        case kMasterRole: return "the float32 master copy of " + who;
        case kGradRole: return "the gradient of " + who;
        default: return "state " + std::to_string(r.slot) + " of " + who;
    }
}

std::string shape_text(at::IntArrayRef sizes) {
    std::ostringstream out;
    out << "(";
    for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
    out << (sizes.size() == 1 ? ",)" : ")");
    return out.str();
}

// Records the memory of a contiguous tensor of the step (0-size tensors hold none) and returns its data pointer
// (untyped: the caller has checked the dtype).
void* note_region(std::vector<Region>& regions, const at::Tensor& t, int32_t tensor, int role, int slot = 0) {
    void* data = t.data_ptr();
    if (t.numel() == 0) return data;
    const auto begin = reinterpret_cast<uintptr_t>(data);
    regions.push_back(Region{begin, begin + static_cast<uintptr_t>(t.numel() * t.element_size()), tensor, role,
                             slot});
    return data;
}

// No tensor the step writes may share memory with another tensor of the step (a weight listed twice, a state
// that is a view of a weight, overlapping views): threads would race on it and the result would depend on the
// order of the chunks. Gradients are only read, so two gradients may share memory.
//
// It runs on every step, over 3-5 regions a tensor, so the common case is made cheap: the regions' bare [begin,
// end) spans are sorted (16-byte keys, sort_spans) and checked for any overlap at all; only when two regions share
// memory (a clash, or gradients sharing memory) does the exact check by role run, on the full records. The quick
// pass is exact whatever the order: a span that begins before one earlier in the list is taken as an overlap.
void check_overlap_roles(std::vector<Region> regions) {
    std::stable_sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) { return a.begin < b.begin; });
    const Region* reach_any = nullptr;      // the region reaching furthest so far
    const Region* reach_written = nullptr;  // the written region reaching furthest so far
    for (const Region& r : regions) {
        const Region* clash = nullptr;
        if (r.written() && reach_any != nullptr && r.begin < reach_any->end) clash = reach_any;
        else if (!r.written() && reach_written != nullptr && r.begin < reach_written->end) clash = reach_written;
        if (clash != nullptr) {
            const bool same = clash->tensor == r.tensor && clash->role == r.role && clash->slot == r.slot;
            throw py::value_error(same ? describe(r) + " overlaps itself"
                                       : describe(*clash) + " and " + describe(r) +
                                             " share memory; every weight and state must have its own storage");
        }
        if (reach_any == nullptr || r.end > reach_any->end) reach_any = &r;
        if (r.written() && (reach_written == nullptr || r.end > reach_written->end)) reach_written = &r;
    }
}

struct Span {
    uintptr_t begin, end;
};

// Sorts spans by begin (stably): a least-significant-digit radix sort on begin - min, shifted right by the low bits
// every begin shares (allocation alignment), 11 bits a pass: two or three linear passes for the addresses of a
// step, where std::sort spent half of a small-tensor step's checks. `scratch` is its second buffer.
void sort_spans(std::vector<Span>& spans, std::vector<Span>& scratch) {
    const size_t n = spans.size();
    if (n < 64) {
        std::stable_sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
        return;
    }
    uintptr_t lo = spans[0].begin, hi = lo, varying = 0;
    for (const Span& span : spans) {
        lo = std::min(lo, span.begin);
        hi = std::max(hi, span.begin);
        varying |= span.begin ^ spans[0].begin;
    }
    if (varying == 0) return;  // all begin at the same address
    const int shift = __builtin_ctzll(varying);  // (begin - lo) >> shift keeps the order: the low bits are equal
    const int bits = 64 - __builtin_clzll((hi - lo) >> shift);
    constexpr int kBits = 11;
    constexpr uintptr_t kMask = (uintptr_t{1} << kBits) - 1;
    scratch.resize(n);
    for (int pass = 0; pass * kBits < bits; ++pass) {
        const int at_bit = shift + pass * kBits;
        uint32_t start[kMask + 1] = {};
        for (const Span& span : spans) ++start[((span.begin - lo) >> at_bit) & kMask];
        uint32_t at = 0;
        for (uint32_t& c : start) {
            const uint32_t count = c;
            c = at;
            at += count;
        }
        for (const Span& span : spans) scratch[start[((span.begin - lo) >> at_bit) & kMask]++] = span;
        spans.swap(scratch);
    }
}

void check_no_overlap(const std::vector<Region>& regions, std::vector<Span>& spans, std::vector<Span>& scratch) {
    spans.resize(regions.size());
    for (size_t i = 0; i < regions.size(); ++i) spans[i] = {regions[i].begin, regions[i].end};
    sort_spans(spans, scratch);
    uintptr_t reach = 0;
    for (const Span& span : spans) {
        if (span.begin < reach) return check_overlap_roles(regions);
        reach = std::max(reach, span.end);
    }
}

// A state tensor of a weight the kernels take must be a CPU float32 tensor of the weight's shape (`row_state`:
// one value per row, shape [rows, 1]), as the optimizer creates it. The check allocates nothing unless it fails
// (it runs for every state of every tensor of every step).
void check_state_tensor(const at::Tensor& leaf, const at::Tensor& weight, int32_t tensor, int slot, bool row_state,
                        const RuleDesc& rule) {
    const bool dense = leaf.device().is_cpu() && leaf.layout() == at::kStrided && leaf.scalar_type() == at::kFloat;
    c10::SmallVector<int64_t, 8> expect;
    bool weight_shaped = true, must_be_none = false;
    if (row_state) {
        expect = {weight.dim() == 0 ? 1 : weight.size(0), 1};
        weight_shaped = false;
    }
    if (rule.state_shape != nullptr) {  // factored states: the rule knows their shapes
        expect.resize(weight.dim() + 1);
        const int dim = rule.state_shape(slot, static_cast<int>(weight.dim()), weight.sizes().data(), expect.data());
        must_be_none = dim < 0;
        expect.resize(must_be_none ? 0 : dim);
        weight_shaped = false;
    }
    const at::IntArrayRef want = weight_shaped ? weight.sizes() : at::IntArrayRef(expect);
    if (dense && !must_be_none && leaf.sizes() == want) return;
    const std::string who = "state " + std::to_string(slot) + " of @" + std::to_string(tensor);
    if (!dense)
        throw py::value_error(who + " is a " + std::string(c10::toString(leaf.scalar_type())) + " tensor on " +
                              leaf.device().str() + "; expected a dense float32 tensor on cpu");
    if (must_be_none)
        throw py::value_error(who + " must be None for a weight of shape " + shape_text(weight.sizes()));
    throw py::value_error(who + " has shape " + shape_text(leaf.sizes()) + ", expected " + shape_text(want) +
                          " for a weight of shape " + shape_text(weight.sizes()));
}

// The float32 master copy of a float16/bfloat16 weight: a CPU float32 tensor of the weight's shape.
void check_master_copy(const at::Tensor& master, const at::Tensor& weight, int32_t tensor) {
    if (!master.device().is_cpu() || master.scalar_type() != at::kFloat || master.sizes() != weight.sizes())
        throw py::value_error("the multi_precision state of @" + std::to_string(tensor) +
                              " must be (weight32, state) with weight32 a float32 copy of shape " +
                              shape_text(weight.sizes()) + " on cpu, as create_state_multi_precision makes it");
}

struct Step {  // (a new field must be reset in StepLease::clear too)
    const RuleDesc* rule = nullptr;
    std::vector<float*> weights;
    std::vector<void*> low_precision;
    std::vector<const void*> grads;
    std::vector<float*> states[kMaxStates];
    std::vector<float> scalars;
    std::vector<int64_t> numels, row_lengths, rows;
    std::vector<int64_t> inner_shape;  // {dim, shape[-2], shape[-1]} per tensor (StepArgs::inner_shape)
    std::vector<Chunk> chunks;
    std::vector<at::TensorImpl*> written;
    int low_precision_dtype = kFloat32;
    bool multi_precision_step = false;
    uint32_t present = 0;
    bool have_present = false;
    std::vector<Region> regions;  // memory each tensor of the step reads or writes (see check_no_overlap)
    std::vector<Span> spans, span_scratch;  // check_no_overlap's sorted copy of the regions
    std::vector<double> given_sums;  // every norm stage's sums, one row per tensor, from aux = (aux, sums...)
    bool sums_given = false;
    std::vector<double> lrs, wds, ts, aux_values;  // the per-tensor values of the call (finish; StepArgs::lrs, wds)
    std::vector<double> hyper;  // a float64 copy of the hyperparameters for the rule (StepArgs::hyper)
};

// Each Python thread keeps one Step between calls and reuses its tables (cleared, their memory kept): a step of
// thousands of tensors then allocates nothing once warm, where new tables cost a measurable share of the per-tensor
// work (page faults, growth copies). A call made while the thread's Step is in use (Python code run by a number's
// __float__ during unpacking, say) gets a new one; a step of more than kKeepTensors tensors gives its memory back.
constexpr size_t kKeepTensors = 1 << 15;

class StepLease {
  public:
    StepLease() {
        static thread_local std::unique_ptr<Step> kept;
        static thread_local bool in_use = false;
        if (in_use) {
            own_ = std::make_unique<Step>();
            step_ = own_.get();
            return;
        }
        if (!kept) kept = std::make_unique<Step>();
        in_use = true;
        in_use_ = &in_use;
        kept_ = &kept;
        step_ = kept.get();
    }
    ~StepLease() {
        if (in_use_ == nullptr) return;
        if (step_->numels.size() > kKeepTensors) kept_->reset();  // a huge step: free its tables
        else clear(*step_);
        *in_use_ = false;
    }
    StepLease(const StepLease&) = delete;
    StepLease& operator=(const StepLease&) = delete;
    Step& operator*() const { return *step_; }
    Step* operator->() const { return step_; }

  private:
    static void clear(Step& s) {  // every table of the Step emptied, its capacity kept; every flag reset
        for (auto& slot : s.states) slot.clear();
        for (auto* v : {&s.numels, &s.row_lengths, &s.rows, &s.inner_shape}) v->clear();
        for (auto* v : {&s.given_sums, &s.lrs, &s.wds, &s.ts, &s.aux_values, &s.hyper}) v->clear();
        s.weights.clear();
        s.low_precision.clear();
        s.grads.clear();
        s.scalars.clear();
        s.chunks.clear();
        s.written.clear();
        s.regions.clear();
        s.spans.clear();
        s.span_scratch.clear();
        s.rule = nullptr;
        s.low_precision_dtype = kFloat32;
        s.multi_precision_step = false;
        s.present = 0;
        s.have_present = false;
        s.sums_given = false;
    }
    Step* step_ = nullptr;
    std::unique_ptr<Step> own_;
    bool* in_use_ = nullptr;
    std::unique_ptr<Step>* kept_ = nullptr;
};

// The state slots of one tensor: None, a tensor, or a tuple of tensors/None (a NamedTuple is a tuple).
bool unpack_state(Step& s, PyObject* state, const at::Tensor& weight) {
    const int32_t tensor = static_cast<int32_t>(s.numels.size()) - 1;
    const RuleDesc& r = *s.rule;
    const at::Tensor* leaves[kMaxStates] = {nullptr, nullptr, nullptr, nullptr};
    int n = 0;
    if (state == Py_None) {
        n = 0;
    } else if (const at::Tensor* t = as_tensor(state)) {
        leaves[0] = t;
        n = 1;
    } else if (PyTuple_Check(state)) {
        n = static_cast<int>(PyTuple_GET_SIZE(state));
        if (n > kMaxStates) return false;
        for (int k = 0; k < n; ++k) {
            PyObject* item = PyTuple_GET_ITEM(state, k);
            if (item == Py_None) continue;
            leaves[k] = as_tensor(item);
            if (leaves[k] == nullptr) return false;
        }
    } else {
        return false;
    }
    const bool mixed = r.state_shape != nullptr;  // missing trailing slots are None (see RuleDesc::state_shape)
    if (n > r.n_states || (n < r.n_states && !(n == 0 && r.n_states == 1) && !mixed)) return false;
    uint32_t present = 0;
    for (int k = 0; k < r.n_states; ++k) {
        const at::Tensor* leaf = leaves[k];
        if (leaf == nullptr) {
            if (!(r.optional_states & (1u << k))) return false;
            std::vector<int64_t> sizes(weight.dim() + 1);
            if (mixed && r.state_shape(k, static_cast<int>(weight.dim()), weight.sizes().data(), sizes.data()) >= 0)
                return false;  // a factored weight needs this slot
            s.states[k].push_back(nullptr);
            continue;
        }
        const bool row_state = (r.row_states & (1u << k)) != 0;
        check_state_tensor(*leaf, weight, tensor, k, row_state, r);
        if (!plain(*leaf, at::kFloat, leaf->numel())) return false;  // a non-contiguous state: the torch path
        void* data = note_region(s.regions, *leaf, tensor, kStateRole, k);
        present |= 1u << k;
        // a 0-size state may have no data pointer, but a null entry means None to the rules: point anywhere
        static float empty_state;
        s.states[k].push_back(leaf->numel() ? static_cast<float*>(data) : &empty_state);
        s.written.push_back(leaf->unsafeGetTensorImpl());
    }
    if (!s.have_present) {
        s.present = present;
        s.have_present = true;
    }
    return mixed || present == s.present;  // a step mixes no None and tensor states in one slot
}

// Unpacks tensor i: weight, gradient (dense, or the values of a row-sparse gradient) and state.
bool unpack_one(Step& s, PyObject* weight_obj, PyObject* grad_obj, PyObject* state_obj, bool multi_precision,
                int64_t grad_rows) {
    const at::Tensor* weight = as_tensor(weight_obj);
    const at::Tensor* grad = as_tensor(grad_obj);
    if (weight == nullptr || grad == nullptr) return false;
    if (s.rule->weight_dim != 0 && weight->dim() != s.rule->weight_dim) return false;
    const at::ScalarType wtype = weight->scalar_type();
    const int64_t numel = weight->numel();
    const int64_t rows = weight->dim() == 0 ? 1 : weight->size(0);
    const int64_t row_length = rows == 0 ? 0 : numel / rows;
    const int64_t grad_numel = grad_rows < 0 ? numel : grad_rows * row_length;
    const int32_t tensor = static_cast<int32_t>(s.numels.size());
    if (!plain(*grad, wtype, grad_numel)) return false;
    if (grad_rows < 0 && grad->sizes() != weight->sizes()) return false;
    const bool low = wtype == at::kHalf || wtype == at::kBFloat16;
    if (low) {
        if (!multi_precision || !PyTuple_Check(state_obj) || PyTuple_GET_SIZE(state_obj) != 2) return false;
        const at::Tensor* master = as_tensor(PyTuple_GET_ITEM(state_obj, 0));
        if (master == nullptr || !plain(*weight, wtype, numel)) return false;
        check_master_copy(*master, *weight, tensor);
        if (!plain(*master, at::kFloat, numel)) return false;
        const int dtype = wtype == at::kHalf ? kFloat16 : kBFloat16;
        if (s.multi_precision_step ? s.low_precision_dtype != dtype : !s.weights.empty()) return false;
        s.multi_precision_step = true;
        s.low_precision_dtype = dtype;
        s.weights.push_back(static_cast<float*>(note_region(s.regions, *master, tensor, kMasterRole)));
        s.written.push_back(master->unsafeGetTensorImpl());
        state_obj = PyTuple_GET_ITEM(state_obj, 1);
    } else {
        if (wtype != at::kFloat || !plain(*weight, at::kFloat, numel) || s.multi_precision_step) return false;
    }
    s.written.push_back(weight->unsafeGetTensorImpl());
    void* weight_data = note_region(s.regions, *weight, tensor, low ? kLowPrecisionRole : kWeightRole);
    if (low) s.low_precision.push_back(weight_data);
    else s.weights.push_back(static_cast<float*>(weight_data));
    s.grads.push_back(note_region(s.regions, *grad, tensor, kGradRole));
    s.numels.push_back(numel);
    s.row_lengths.push_back(row_length);
    const int64_t dim = weight->dim();
    s.inner_shape.insert(s.inner_shape.end(), {dim, dim >= 2 ? weight->size(-2) : 1, dim >= 1 ? weight->size(-1) : 1});
    return unpack_state(s, state_obj, *weight);
}

// A per-tensor value: one number for every tensor, or a sequence with one per tensor.
bool per_tensor(PyObject* obj, Py_ssize_t n, std::vector<double>& out) {
    out.resize(n);
    if (PyFloat_Check(obj) || PyLong_Check(obj)) {
        const double v = PyFloat_AsDouble(obj);
        for (auto& x : out) x = v;
        return !PyErr_Occurred();
    }
    PyObject* seq = PySequence_Fast(obj, "expected a number or a sequence");
    if (seq == nullptr) {
        PyErr_Clear();
        return false;
    }
    bool ok = PySequence_Fast_GET_SIZE(seq) == n;
    for (Py_ssize_t i = 0; ok && i < n; ++i) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        ok = !PyErr_Occurred();
    }
    Py_DECREF(seq);
    PyErr_Clear();
    return ok;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void add_dense_chunks(Step& s, int32_t tensor) {
    const int64_t numel = s.numels[tensor];
    int64_t step = kChunk;
    if (s.rule->row_chunks) {
        const int64_t row = std::max<int64_t>(s.row_lengths[tensor], 1);
        step = std::max<int64_t>(1, kChunk / row) * row;
    }
    for (int64_t off = 0; off < numel; off += step)
        s.chunks.push_back(Chunk{tensor, off, off, std::min(step, numel - off)});
}

bool finish(Step& s, const std::vector<double>& hyper, const std::vector<double>& lrs, const std::vector<double>& wds,
            const std::vector<double>& ts, PyObject* aux) {
    const RuleDesc& r = *s.rule;
    if (r.check != nullptr && r.check(hyper.data(), static_cast<int>(hyper.size()), s.present) != nullptr)
        return false;
    const size_t n = s.weights.size();
    // aux = (aux, sums of stage 0, ...): a rule with norm stages given each stage's sums, float64 [n, width]
    const int n_stages = (r.stage_sums[0] > 0) + (r.stage_sums[1] > 0);
    if (n_stages > 0 && PyTuple_Check(aux) && PyTuple_GET_SIZE(aux) == 1 + n_stages) {
        const int64_t all_sums = r.stage_sums[0] + r.stage_sums[1];
        s.given_sums.assign(n * all_sums, 0.0);
        for (int k = 0, column = 0; k < n_stages; column += r.stage_sums[k], ++k) {
            const at::Tensor* sums = as_tensor(PyTuple_GET_ITEM(aux, 1 + k));
            const int64_t width = r.stage_sums[k];
            if (sums == nullptr || !plain(*sums, at::kDouble, static_cast<int64_t>(n) * width) || sums->dim() != 2 ||
                sums->size(1) != width)
                return false;
            const double* from = sums->data_ptr<double>();
            for (size_t t = 0; t < n; ++t)
                for (int64_t j = 0; j < width; ++j) s.given_sums[t * all_sums + column + j] = from[t * width + j];
        }
        s.sums_given = true;
        aux = PyTuple_GET_ITEM(aux, 0);
    }
    std::vector<double>& aux_values = s.aux_values;
    const size_t aux_width = static_cast<size_t>(r.n_aux);
    if ((aux == Py_None) != (aux_width == 0)) return false;
    if (aux_width != 0) {
        const Py_ssize_t size = PySequence_Size(aux);
        if (size < 0 || static_cast<size_t>(size) != n * aux_width || !per_tensor(aux, size, aux_values)) {
            PyErr_Clear();
            return false;
        }
    }
    s.hyper = hyper;
    s.lrs = lrs;
    s.wds = wds;
    s.scalars.assign(n * kMaxScalars, 0.0f);
    for (size_t i = 0; i < n; ++i) {
        float* out = s.scalars.data() + i * kMaxScalars;
        const double* aux_i = aux_width ? aux_values.data() + i * aux_width : nullptr;
        // `prepare` is a pure function: a tensor with bit for bit the inputs of the one before gets its scalars
        // (most steps give every tensor the same lr, wd and count; prepare costs powers and divisions)
        if (i > 0 && same_bits(lrs[i], lrs[i - 1]) && same_bits(wds[i], wds[i - 1]) && ts[i] == ts[i - 1] &&
            (aux_width == 0 || std::memcmp(aux_i, aux_i - aux_width, aux_width * sizeof(double)) == 0)) {
            std::memcpy(out, out - kMaxScalars, kMaxScalars * sizeof(float));
            continue;
        }
        r.prepare(hyper.data(), lrs[i], wds[i], static_cast<int64_t>(ts[i]), aux_i, out);
    }
    return true;
}

StepArgs make_args(Step& s) {
    StepArgs a{};
    a.n_tensors = static_cast<int64_t>(s.weights.size());
    a.n_chunks = static_cast<int64_t>(s.chunks.size());
    for (const Chunk& c : s.chunks) a.n_elements += c.length;
    a.chunks = s.chunks.data();
    a.weights = s.weights.data();
    a.low_precision = s.multi_precision_step ? s.low_precision.data() : nullptr;
    a.low_precision_dtype = s.low_precision_dtype;
    a.grads = s.grads.data();
    a.grad_dtype = s.multi_precision_step ? s.low_precision_dtype : kFloat32;
    for (int k = 0; k < kMaxStates; ++k) a.states[k] = k < s.rule->n_states ? s.states[k].data() : nullptr;
    a.scalars = s.scalars.data();
    a.numels = s.numels.data();
    a.row_lengths = s.row_lengths.data();
    a.n_threads = at::get_num_threads();
    a.given_sums = s.sums_given ? s.given_sums.data() : nullptr;
    a.inner_shape = s.inner_shape.data();
    a.hyper = s.hyper.data();
    a.n_hyper = static_cast<int>(s.hyper.size());
    a.lrs = s.lrs.data();
    a.wds = s.wds.data();
    return a;
}

// Runs the unpacked step; `results`: where a rule that reports values of the step writes them (step_into).
void run(Step& s, double* results = nullptr) {
    check_no_overlap(s.regions, s.spans, s.span_scratch);
    StepArgs a = make_args(s);
    a.results = results;
    {
        py::gil_scoped_release release;
        s.rule->run(a);
    }
    for (at::TensorImpl* impl : s.written) impl->bump_version();  // autograd sees the in-place update
}

// A tensor's metadata lies in three places, each found through the one before (its Python object, its TensorImpl,
// its StorageImpl), scattered over the heap between the tensors' data: unpacking the tensors one after the other
// waited on each in turn (most of the unpacking time of a step of 4,000 tensors of a few thousand values). So the
// step asks for them ahead, in stages: stage 0 the entry's object (weight, gradient or state), stage 1 the
// TensorImpl (a tuple state: its items' objects), stage 2 the StorageImpl (a tuple: the items' TensorImpls),
// stage 3 a tuple's items' StorageImpls. Each stage reads only what the stage before asked for; it only reads.
void prefetch_tensor(PyObject* obj, int stage) {
    const at::Tensor* t = as_tensor(obj);
    if (t == nullptr) return;
    const c10::TensorImpl* impl = t->unsafeGetTensorImpl();
    if (stage == 0) {
        for (size_t line = 0; line < sizeof(c10::TensorImpl); line += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(impl) + line);
    } else {
        __builtin_prefetch(impl->unsafe_storage().unsafeGetStorageImpl());
    }
}

void prefetch_entry(PyObject* obj, int stage) {
    if (obj == Py_None) return;  // (a None state: THPVariable_Check would ask Python's isinstance, ~0.1 us)
    if (stage == 0) {
        __builtin_prefetch(obj);
    } else if (PyTuple_Check(obj)) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(obj); ++k) {
            PyObject* item = PyTuple_GET_ITEM(obj, k);
            if (stage == 1) __builtin_prefetch(item);
            else if (item != Py_None) prefetch_tensor(item, stage - 2);
        }
    } else if (stage < 3) {
        prefetch_tensor(obj, stage - 1);
    }
}

constexpr Py_ssize_t kPrefetchStride = 4;  // tensors between two prefetch stages

// Unpacks and checks a dense step (the lists of `step`) into s; false when the kernels cannot take it.
bool unpack_dense(Step& s, int rule, py::list weights, py::list grads, py::list states, py::object lrs,
                  py::object wds, py::object ts, const std::vector<double>& hyper, bool multi_precision,
                  py::object aux) {
    s.rule = rule_by_id(rule);
    const Py_ssize_t n = PyList_GET_SIZE(weights.ptr());
    if (s.rule == nullptr || PyList_GET_SIZE(grads.ptr()) != n || PyList_GET_SIZE(states.ptr()) != n) return false;
    s.weights.reserve(n);
    s.grads.reserve(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (int stage = 0; stage < 4; ++stage) {
            const Py_ssize_t ahead = i + (4 - stage) * kPrefetchStride;
            if (ahead >= n) continue;
            for (PyObject* list : {weights.ptr(), grads.ptr(), states.ptr()})
                prefetch_entry(PyList_GET_ITEM(list, ahead), stage);
        }
        if (!unpack_one(s, PyList_GET_ITEM(weights.ptr(), i), PyList_GET_ITEM(grads.ptr(), i),
                        PyList_GET_ITEM(states.ptr(), i), multi_precision, -1))
            return false;
    }
    if (!per_tensor(lrs.ptr(), n, s.lrs) || !per_tensor(wds.ptr(), n, s.wds) || !per_tensor(ts.ptr(), n, s.ts) ||
        !finish(s, hyper, s.lrs, s.wds, s.ts, aux.ptr()))
        return false;
    for (int32_t i = 0; i < static_cast<int32_t>(n); ++i) add_dense_chunks(s, i);
    return true;
}

// step(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux) -> bool
bool step(int rule, py::list weights, py::list grads, py::list states, py::object lrs, py::object wds, py::object ts,
          const std::vector<double>& hyper, bool multi_precision, py::object aux) {
    const RuleDesc* r = rule_by_id(rule);
    if (r != nullptr && r->n_results != 0) return false;  // its results need step_into
    StepLease lease;
    Step& s = *lease;
    if (!unpack_dense(s, rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux)) return false;
    run(s);
    return true;
}

// step_into(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux, results) -> bool: `step` for a
// rule that reports values of the step (RuleDesc::n_results: Prodigy's d estimate), written to `results`, a float64
// CPU tensor of that many elements the caller keeps (nothing is allocated per step).
bool step_into(int rule, py::list weights, py::list grads, py::list states, py::object lrs, py::object wds,
               py::object ts, const std::vector<double>& hyper, bool multi_precision, py::object aux,
               py::object results) {
    StepLease lease;
    Step& s = *lease;
    const RuleDesc* r = rule_by_id(rule);
    const at::Tensor* out = as_tensor(results.ptr());
    if (r == nullptr || r->n_results == 0 || out == nullptr || !plain(*out, at::kDouble, r->n_results)) return false;
    if (!unpack_dense(s, rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux)) return false;
    run(s, out->data_ptr<double>());
    return true;
}

// norm_sums(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux, prior) -> tensor or None:
// one norm stage of a rule with norm stages (RuleDesc::stage_sums): stage 0 without `prior`, stage 1 with prior =
// stage 0's sums. Returns the stage's per-tensor sums, float64 [n_tensors, width], or None when the kernels cannot
// take the step (nothing written). A stage may advance states in place (LAMB's and LANS's moments): the update
// (`step` with aux = (aux, stage 0's sums[, stage 1's sums])) must follow.
py::object norm_sums(int rule, py::list weights, py::list grads, py::list states, py::object lrs, py::object wds,
                     py::object ts, const std::vector<double>& hyper, bool multi_precision, py::object aux,
                     py::object prior) {
    StepLease lease;
    Step& s = *lease;
    const RuleDesc* r = rule_by_id(rule);
    if (r == nullptr || r->norm_stage == nullptr) return py::none();
    const int stage = prior.is_none() ? 0 : 1;
    const int64_t width = r->stage_sums[stage], prior_width = stage == 0 ? 0 : r->stage_sums[0];
    if (width == 0 || !unpack_dense(s, rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux))
        return py::none();
    const int64_t n = static_cast<int64_t>(s.weights.size());
    const double* prior_sums = nullptr;
    if (stage == 1) {
        const at::Tensor* p = as_tensor(prior.ptr());
        if (p == nullptr || !plain(*p, at::kDouble, n * prior_width) || p->dim() != 2 || p->size(1) != prior_width)
            return py::none();
        prior_sums = p->data_ptr<double>();
    }
    check_no_overlap(s.regions, s.spans, s.span_scratch);  // a norm stage may write states (LAMB's and LANS's moments)
    at::Tensor out = at::zeros({n, width}, at::TensorOptions().dtype(at::kDouble));
    const StepArgs a = make_args(s);
    {
        py::gil_scoped_release release;
        r->norm_stage(a, stage, prior_sums, out.data_ptr<double>());
    }
    for (at::TensorImpl* impl : s.written) impl->bump_version();
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(out));
}

// step_rows(rule, weight, rows, values, state, lr, wd, t, hyper, multi_precision, aux) -> bool: the rule on the
// rows of a row-sparse gradient only (MXNet's lazy update). `rows` are distinct sorted int64 row indices and
// `values` the gradient's rows, shape [len(rows), *weight.shape[1:]].
bool step_rows(int rule, py::object weight, py::object rows_obj, py::object values, py::object state, double lr,
               double wd, int64_t t, const std::vector<double>& hyper, bool multi_precision, py::object aux) {
    StepLease lease;
    Step& s = *lease;
    s.rule = rule_by_id(rule);
    const at::Tensor* rows = as_tensor(rows_obj.ptr());
    if (s.rule == nullptr || !s.rule->lazy_rows || rows == nullptr || rows->dim() != 1) return false;
    const int64_t n_rows = rows->numel();
    if (!plain(*rows, at::kLong, n_rows)) return false;
    if (!unpack_one(s, weight.ptr(), values.ptr(), state.ptr(), multi_precision, n_rows)) return false;
    const int64_t weight_rows = s.row_lengths[0] == 0 ? 0 : s.numels[0] / s.row_lengths[0];
    const int64_t* r = rows->data_ptr<int64_t>();
    for (int64_t i = 0; i < n_rows; ++i)
        if (r[i] < 0 || r[i] >= weight_rows || (i > 0 && r[i] <= r[i - 1])) return false;
    if (!finish(s, hyper, {lr}, {wd}, {static_cast<double>(t)}, aux.ptr())) return false;
    const int64_t row = s.row_lengths[0];
    const int64_t piece = s.rule->row_chunks ? std::max<int64_t>(row, 1) : kChunk;  // whole rows if the rule says so
    for (int64_t i = 0; i < n_rows; ++i)
        for (int64_t off = 0; off < row; off += piece)
            s.chunks.push_back(Chunk{0, r[i] * row + off, i * row + off, std::min(piece, row - off)});
    run(s);
    return true;
}


// ------------------------------------------------------------------------------------------ the usual-case check
// usual_inputs(weights, grads, states, known) -> True | bytes | None: the check the torch paths make before every
// step (Optimizer._inputs_usual), for lists of any tensors (any dtype, strided views, CUDA), in one pass here.
// None: "look closer" (the Python check entry by entry runs and names what is wrong, if anything is): a weight or
// gradient that is not a tensor, a weight that is not floating point or listed twice, a gradient of another shape
// or dtype, a tensor on another device than the first weight or that is not strided (sparse, nested, a tensor
// subclass with its own dispatch, a tensor without storage), a state entry that is not a tensor or None, or a tensor
// the step writes (weight or state) touching a byte another tensor of the step touches (by the byte range
// [data, data + extent) a strided tensor can reach: interleaved views count as overlapping). Otherwise the states'
// layout decides: True when its signature (every weight's dtype and shape, every state's flat entries: None, or
// dtype and shape) is byte for byte one of `known` (a list of bytes), else that signature as bytes, which the caller
// compares with the states create_state makes (and keeps in `known` if they agree).

// The bytes [begin, end) a non-empty strided tensor's elements can reach, from its first element (the usual-case
// check's regions; Muon's passes check their tensors apart with it).
std::pair<uintptr_t, uintptr_t> span_of(const at::Tensor& t) {
    const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    int64_t extent = 1;
    const auto sizes = t.sizes(), strides = t.strides();
    for (size_t d = 0; d < sizes.size(); ++d) extent += (sizes[d] - 1) * std::abs(strides[d]);
    return {begin, begin + static_cast<uintptr_t>(extent * t.element_size())};
}

struct UsualScratch {
    std::vector<int64_t> signature;
    std::vector<Region> regions;
    std::vector<Span> spans, span_scratch;
    std::vector<PyObject*> empty_weights;
};

// The byte range a strided tensor can reach (nothing for 0-size); false when the tensor is not one this check reads
// (not strided, no storage, a Python-dispatch subclass, another device than `device`).
bool note_strided(std::vector<Region>& regions, const at::Tensor& t, const c10::Device& device, int role) {
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    if (t.layout() != at::kStrided || t.is_nested() || impl->is_python_dispatch() || !impl->has_storage() ||
        t.device() != device)
        return false;
    if (t.numel() == 0) return true;
    const auto [begin, end] = span_of(t);
    regions.push_back(Region{begin, end, 0, role, 0});
    return true;
}

void sign_tensor(std::vector<int64_t>& sig, const at::Tensor& t) {
    sig.push_back(static_cast<int64_t>(t.scalar_type()));
    sig.push_back(t.dim());
    const auto sizes = t.sizes();
    sig.insert(sig.end(), sizes.begin(), sizes.end());
}

// Appends the flat entries of one state (None, a tensor, or tuples/lists of them, nested) to the signature and
// their memory to the regions; false for anything else.
bool sign_state(UsualScratch& u, PyObject* obj, const c10::Device& device, int64_t& entries, int depth) {
    if (obj == Py_None) {
        u.signature.push_back(-1);
        ++entries;
        return true;
    }
    if (PyTuple_Check(obj) || PyList_Check(obj)) {  // asked first: THPVariable_Check of a tuple calls isinstance
        if (depth > 8) return false;
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
        for (Py_ssize_t k = 0; k < n; ++k)
            if (!sign_state(u, PySequence_Fast_GET_ITEM(obj, k), device, entries, depth + 1)) return false;
        return true;
    }
    const at::Tensor* t = as_tensor(obj);
    if (t == nullptr || !note_strided(u.regions, *t, device, kStateRole)) return false;
    sign_tensor(u.signature, *t);
    ++entries;
    return true;
}

// Whether any two regions touch a common byte: the sorted spans first; only where they do, the exact check by role
// (two gradients may share memory).
bool written_overlap(UsualScratch& u) {
    u.spans.resize(u.regions.size());
    for (size_t i = 0; i < u.regions.size(); ++i) u.spans[i] = {u.regions[i].begin, u.regions[i].end};
    sort_spans(u.spans, u.span_scratch);
    uintptr_t reach = 0;
    bool any = false;
    for (const Span& span : u.spans) {
        if (span.begin < reach) {
            any = true;
            break;
        }
        reach = std::max(reach, span.end);
    }
    if (!any) return false;
    std::stable_sort(u.regions.begin(), u.regions.end(),
                     [](const Region& a, const Region& b) { return a.begin < b.begin; });
    uintptr_t reach_any = 0, reach_written = 0;
    for (const Region& r : u.regions) {
        if (r.begin < (r.written() ? reach_any : reach_written)) return true;
        reach_any = std::max(reach_any, r.end);
        if (r.written()) reach_written = std::max(reach_written, r.end);
    }
    return false;
}

bool usual_pass(UsualScratch& u, PyObject* weights, PyObject* grads, PyObject* states) {
    const Py_ssize_t n = PyList_GET_SIZE(weights);
    if (PyList_GET_SIZE(grads) != n || PyList_GET_SIZE(states) != n) return false;
    if (n == 0) return true;
    const at::Tensor* first = as_tensor(PyList_GET_ITEM(weights, 0));
    if (first == nullptr) return false;
    const c10::Device device = first->device();
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (int stage = 0; stage < 4; ++stage) {  // the metadata ahead, as unpack_dense asks for it
            const Py_ssize_t ahead = i + (4 - stage) * kPrefetchStride;
            if (ahead >= n) continue;
            for (PyObject* list : {weights, grads, states}) prefetch_entry(PyList_GET_ITEM(list, ahead), stage);
        }
        PyObject* weight_obj = PyList_GET_ITEM(weights, i);
        const at::Tensor* weight = as_tensor(weight_obj);
        const at::Tensor* grad = as_tensor(PyList_GET_ITEM(grads, i));
        if (weight == nullptr || grad == nullptr || !note_strided(u.regions, *weight, device, kWeightRole) ||
            !note_strided(u.regions, *grad, device, kGradRole) || !at::isFloatingType(weight->scalar_type()) ||
            grad->scalar_type() != weight->scalar_type() || grad->sizes() != weight->sizes())
            return false;
        if (weight->numel() == 0) u.empty_weights.push_back(weight_obj);  // listed twice, they would not overlap
        sign_tensor(u.signature, *weight);
        const size_t count_at = u.signature.size();
        u.signature.push_back(0);
        int64_t entries = 0;
        if (!sign_state(u, PyList_GET_ITEM(states, i), device, entries, 0)) return false;
        u.signature[count_at] = entries;
    }
    std::sort(u.empty_weights.begin(), u.empty_weights.end());
    if (std::adjacent_find(u.empty_weights.begin(), u.empty_weights.end()) != u.empty_weights.end()) return false;
    return !written_overlap(u);
}

py::object usual_inputs(py::list weights, py::list grads, py::list states, py::list known) {
    static thread_local UsualScratch scratch;
    UsualScratch& u = scratch;
    u.signature.clear();
    u.regions.clear();
    u.empty_weights.clear();
    if (!usual_pass(u, weights.ptr(), grads.ptr(), states.ptr())) return py::none();
    const char* data = reinterpret_cast<const char*>(u.signature.data());
    const Py_ssize_t size = static_cast<Py_ssize_t>(u.signature.size() * sizeof(int64_t));
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(known.ptr()); ++k) {
        PyObject* item = PyList_GET_ITEM(known.ptr(), k);
        if (PyBytes_Check(item) && PyBytes_GET_SIZE(item) == size && std::memcmp(PyBytes_AS_STRING(item), data, size) == 0)
            return py::reinterpret_borrow<py::object>(Py_True);
    }
    return py::bytes(data, size);
}

// ------------------------------------------------------------------------------------------ Muon's passes
bool disjoint(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() == 0 || b.numel() == 0) return true;
    const auto x = span_of(a), y = span_of(b);
    return x.second <= y.first || y.second <= x.first;
}

// muon_direction(grad, momentum, out, mu, nesterov) -> bool: momentum.lerp_(grad, 1 - mu) and out =
// bfloat16(grad.lerp(momentum, mu)) (nesterov, else bfloat16(momentum)) in one pass (rules_muon.cpp). grad and
// momentum float32, out bfloat16, all contiguous CPU tensors of the same size, out sharing memory with neither.
// False (nothing written) when the tensors are not such.
bool muon_direction_entry(py::object grad_obj, py::object momentum_obj, py::object out_obj, double mu,
                          bool nesterov) {
    const at::Tensor* g = as_tensor(grad_obj.ptr());
    const at::Tensor* m = as_tensor(momentum_obj.ptr());
    const at::Tensor* out = as_tensor(out_obj.ptr());
    if (g == nullptr || m == nullptr || out == nullptr) return false;
    const int64_t n = m->numel();
    if (!plain(*g, at::kFloat, n) || !plain(*m, at::kFloat, n) || !plain(*out, at::kBFloat16, n)) return false;
    if (!disjoint(*out, *m) || !disjoint(*out, *g) || !disjoint(*m, *g)) return false;
    {
        py::gil_scoped_release release;
        muon_direction(g->data_ptr<float>(), m->data_ptr<float>(), static_cast<BFloat16*>(out->data_ptr()), n,
                       static_cast<float>(1.0 - mu), static_cast<float>(mu), nesterov, at::get_num_threads());
    }
    m->unsafeGetTensorImpl()->bump_version();
    out->unsafeGetTensorImpl()->bump_version();
    return true;
}

// muon_apply(weight, ortho, decay, alpha) -> bool: weight.mul_(decay) then weight.add_(ortho, alpha=alpha) in one
// pass, with decay and alpha rounded to float32 as torch rounds them. weight a contiguous float32 CPU tensor;
// ortho a bfloat16 CPU matrix [rows, cols] of weight's size (rows = weight.shape[0]) with any non-negative strides,
// sharing no memory with weight. False (nothing written) otherwise.
bool muon_apply_entry(py::object weight_obj, py::object ortho_obj, double decay, double alpha) {
    const at::Tensor* w = as_tensor(weight_obj.ptr());
    const at::Tensor* o = as_tensor(ortho_obj.ptr());
    if (w == nullptr || o == nullptr || o->dim() != 2 || w->dim() < 1) return false;
    const int64_t rows = o->size(0), cols = o->size(1);
    if (!plain(*w, at::kFloat, rows * cols) || w->size(0) != rows) return false;
    if (!o->device().is_cpu() || o->layout() != at::kStrided || o->scalar_type() != at::kBFloat16 || o->is_neg() ||
        o->stride(0) < 0 || o->stride(1) < 0 || !disjoint(*w, *o))
        return false;
    if (rows * cols == 0) return true;
    {
        py::gil_scoped_release release;
        muon_apply(w->data_ptr<float>(), static_cast<const BFloat16*>(o->data_ptr()), rows, cols, o->stride(0),
                   o->stride(1), static_cast<float>(decay), static_cast<float>(alpha), at::get_num_threads());
    }
    w->unsafeGetTensorImpl()->bump_version();
    return true;
}

}  // namespace
}  // namespace optzoo

PYBIND11_MODULE(_optzoo_native, m) {
    m.doc() = "optzoo's native optimizer kernels (see optzoo/native/__init__.py)";
    m.def("rule_id", [](const std::string& name) { return optzoo::rule_id(name.c_str()); });
    m.def("rule_names", []() {
        std::vector<std::string> names;
        for (int i = 0; i < optzoo::rule_count(); ++i) names.emplace_back(optzoo::rule_by_id(i)->name);
        return names;
    });
    m.def("step", &optzoo::step);
    m.def("norm_sums", &optzoo::norm_sums);
    m.def("step_into", &optzoo::step_into);
    m.def("step_rows", &optzoo::step_rows);
    m.def("usual_inputs", &optzoo::usual_inputs);
    m.def("muon_direction", &optzoo::muon_direction_entry);
    m.def("muon_apply", &optzoo::muon_apply_entry);
}
