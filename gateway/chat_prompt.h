// The prompt renderer for chat requests from a model's chat template (core/chat_template).
#pragma once

#include <memory>

#include "core/chat_template/chat_template.h"
#include "gateway/openai_request.h"

namespace troupe::gateway {

// Renders with the template's bos/eos tokens, the request's tools and chat_template_kwargs, and
// add_generation_prompt; template errors surface as troupe::error (the gateway answers 400).
prompt_renderer make_chat_renderer(std::shared_ptr<const model_chat_template> tmpl);

}  // namespace troupe::gateway
