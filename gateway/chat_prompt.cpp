#include "gateway/chat_prompt.h"

namespace troupe::gateway {

prompt_renderer make_chat_renderer(std::shared_ptr<const model_chat_template> tmpl) {
  return [tmpl = std::move(tmpl)](const json& messages, const json& options) {
    const json* tools = options.contains("tools") ? &options["tools"] : nullptr;
    const json kwargs = options.value("chat_template_kwargs", json::object());
    const bool add_gen = options.value("add_generation_prompt", true);
    if (options.contains("chat_template")) {
      // The operator allowed request templates: same context (bos/eos of the model), same sandbox.
      chat_template custom = chat_template::parse(options["chat_template"].get<std::string>());
      return custom.render(tmpl->make_context(messages, tools, add_gen, kwargs));
    }
    return tmpl->apply(messages, tools, add_gen, kwargs);
  };
}

}  // namespace troupe::gateway
