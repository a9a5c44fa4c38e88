#include "gateway/chat_prompt.h"

namespace troupe::gateway {

prompt_renderer make_chat_renderer(std::shared_ptr<const model_chat_template> tmpl) {
  return [tmpl = std::move(tmpl)](const json& messages, const json& options) {
    const json* tools = options.contains("tools") ? &options["tools"] : nullptr;
    const json kwargs = options.value("chat_template_kwargs", json::object());
    return tmpl->apply(messages, tools, options.value("add_generation_prompt", true), kwargs);
  };
}

}  // namespace troupe::gateway
