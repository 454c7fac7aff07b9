//! The restricted handlebars Herald accepts, and the bound on the work of one render.
//!
//! Every source is compiled through `compile`, both when a version is saved and when a worker
//! compiles a stored one, so a template that breaks these rules is refused at save and, if it
//! was stored before they existed, fails its deliveries permanently instead of rendering:
//!
//! - helpers: only `HELPERS` (blocks: `if`, `unless`, `each`, `with`); the registry holds
//!   nothing else (no `log`, which would write a parameter into the logs, no `raw`);
//! - no partials (`{{> name}}`, `{{#> name}}`), no decorators and no inline partials
//!   (`{{* …}}`, `{{#*inline}}`): a partial can name the template it is in and recurse until
//!   the stack overflows;
//! - blocks and subexpressions nest at most `MAX_NESTING` deep, so rendering (which recurses
//!   through them) has a bounded stack.
//!
//! Rendering is synchronous, so no timeout can interrupt it; its work is bounded instead. The
//! output goes through a capped writer (`MAX_OUTPUT_BYTES`), and every `#each` body starts
//! with a step counter that charges the body's size for each item: a render that would take
//! more than `MAX_RENDER_STEPS` steps (nested `#each`es over big arrays, even ones that write
//! nothing) stops with `Error::TooMuchWork`.

use std::cell::Cell;

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, Path, PathSeg, RenderContext,
    RenderError, RenderErrorReason,
};

use crate::{Error, Result};

/// The helpers a template may call, as handlebars 6 defines them. `if`, `unless`, `each` and
/// `with` are block helpers; the others return values (`{{#if (eq status "shipped")}}`).
pub const HELPERS: [&str; 15] = [
    "if", "unless", "each", "with", "lookup", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or",
    "not", "len",
];

/// The helpers that may open a block (`{{#each items}}…{{/each}}`).
pub const BLOCK_HELPERS: [&str; 4] = ["if", "unless", "each", "with"];

/// How deep blocks and subexpressions may nest in one source.
pub const MAX_NESTING: usize = 16;

/// The most steps one part's render may take: each item of an `#each` costs the number of
/// template elements in its body.
pub const MAX_RENDER_STEPS: u64 = 200_000;

/// The step counter's helper name. It is registered, but `compile` refuses it in a source, so
/// only the instrumentation calls it.
const STEP_HELPER: &str = "herald-render-step";

/// What `compile` refuses, named in its error.
const NO_PARTIALS: &str = "must not use partials (`{{> …}}`)";
const UNKNOWN_CONSTRUCT: &str = "uses a handlebars construct Herald does not allow";
const NO_DECORATORS: &str =
    "must not use decorators or inline partials (`{{* …}}`, `{{#*inline}}`)";

/// Compiles `source` (the template of `part`), checks it against the rules above and adds the
/// step counter to every `#each` body.
pub(crate) fn compile(part: &'static str, source: &str) -> Result<Template> {
    let mut template = Template::compile(source).map_err(|error| Error::Syntax {
        part,
        message: error.to_string(),
    })?;
    check_template(part, &template, 0)?;
    instrument(&mut template);
    Ok(template)
}

fn check_template(part: &'static str, template: &Template, depth: usize) -> Result<()> {
    template
        .elements
        .iter()
        .try_for_each(|element| check_element(part, element, depth))
}

fn check_element(part: &'static str, element: &TemplateElement, depth: usize) -> Result<()> {
    match element {
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => Ok(()),
        TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
            check_call(part, helper, false, depth)
        }
        TemplateElement::HelperBlock(helper) => {
            let depth = deeper(part, depth)?;
            check_call(part, helper, true, depth)?;
            for body in [&helper.template, &helper.inverse].into_iter().flatten() {
                check_template(part, body, depth)?;
            }
            Ok(())
        }
        TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
            Err(refused(part, NO_DECORATORS.into()))
        }
        TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
            Err(refused(part, NO_PARTIALS.into()))
        }
        // A construct a later handlebars adds is refused until it is reviewed.
        _ => Err(refused(part, UNKNOWN_CONSTRUCT.into())),
    }
}

/// Checks the helper an expression or block calls and its arguments. `{{name}}` without
/// arguments is a variable unless `name` is a helper Herald allows.
fn check_call(
    part: &'static str,
    helper: &HelperTemplate,
    block: bool,
    depth: usize,
) -> Result<()> {
    match helper_name(&helper.name) {
        Some(name) => {
            let called = block || !helper.params.is_empty() || !helper.hash.is_empty();
            let allowed: &[&str] = if block { &BLOCK_HELPERS } else { &HELPERS };
            if name == STEP_HELPER || (called && !allowed.contains(&name)) {
                return Err(refused(part, unknown_helper(name, block)));
            }
        }
        None => check_parameter(part, &helper.name, depth)?,
    }
    helper
        .params
        .iter()
        .chain(helper.hash.values())
        .try_for_each(|parameter| check_parameter(part, parameter, depth))
}

/// The helper a call's name would reach: a bare name, or a one-segment path (handlebars calls
/// a registered helper for `{{name}}` before it looks for a variable).
fn helper_name(name: &Parameter) -> Option<&str> {
    match name {
        Parameter::Name(name) => Some(name),
        Parameter::Path(Path::Relative((segments, raw)))
            if matches!(segments.as_slice(), [PathSeg::Named(_)]) =>
        {
            Some(raw)
        }
        _ => None,
    }
}

fn check_parameter(part: &'static str, parameter: &Parameter, depth: usize) -> Result<()> {
    match parameter {
        Parameter::Subexpression(subexpression) => {
            let depth = deeper(part, depth)?;
            match subexpression.element.as_ref() {
                TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
                    // `(name)` calls `name` even without arguments.
                    if let Some(name) = helper_name(&helper.name)
                        && (name == STEP_HELPER || !HELPERS.contains(&name))
                    {
                        return Err(refused(part, unknown_helper(name, false)));
                    }
                    check_call(part, helper, false, depth)
                }
                other => check_element(part, other, depth),
            }
        }
        Parameter::Name(_) | Parameter::Path(_) | Parameter::Literal(_) => Ok(()),
        _ => Err(refused(part, UNKNOWN_CONSTRUCT.into())),
    }
}

fn deeper(part: &'static str, depth: usize) -> Result<usize> {
    if depth >= MAX_NESTING {
        return Err(refused(
            part,
            format!("must not nest blocks and subexpressions more than {MAX_NESTING} deep"),
        ));
    }
    Ok(depth + 1)
}

fn unknown_helper(name: &str, block: bool) -> String {
    let (kind, allowed) = if block {
        ("block helper", BLOCK_HELPERS.as_slice())
    } else {
        ("helper", HELPERS.as_slice())
    };
    format!(
        "must not use the {kind} `{}`; the allowed ones are {}",
        name.escape_default(),
        allowed.join(", ")
    )
}

fn refused(part: &'static str, message: String) -> Error {
    Error::Refused { part, message }
}

/// Puts `{{herald-render-step <cost>}}` first in every `#each` body, the cost being the body's
/// element count (nested blocks included), so each item charges what rendering it costs.
fn instrument(template: &mut Template) {
    for element in &mut template.elements {
        let TemplateElement::HelperBlock(helper) = element else {
            continue;
        };
        for body in [&mut helper.template, &mut helper.inverse]
            .into_iter()
            .flatten()
        {
            instrument(body);
        }
        let each = matches!(&helper.name, Parameter::Name(name) if name == "each");
        if let (true, Some(body)) = (each, helper.template.as_mut()) {
            let cost = size(body).max(1);
            if let Some(step) = step_element(cost) {
                body.elements.insert(0, step);
                let first = body.mapping.first().cloned();
                if let Some(mapping) = first {
                    body.mapping.insert(0, mapping);
                }
            }
        }
    }
}

/// The elements of `template`, counting those in its blocks.
fn size(template: &Template) -> u64 {
    template
        .elements
        .iter()
        .map(|element| match element {
            TemplateElement::HelperBlock(helper) => {
                1 + [&helper.template, &helper.inverse]
                    .into_iter()
                    .flatten()
                    .map(size)
                    .sum::<u64>()
            }
            _ => 1,
        })
        .sum()
}

/// The step counter's expression, parsed by handlebars itself.
fn step_element(cost: u64) -> Option<TemplateElement> {
    Template::compile(&format!("{{{{{STEP_HELPER} {cost}}}}}"))
        .ok()?
        .elements
        .into_iter()
        .next()
}

thread_local! {
    /// The steps the render running on this thread may still take. A render is synchronous
    /// and runs on one thread, so a thread-local is exactly one render's budget.
    static STEPS_LEFT: Cell<u64> = const { Cell::new(MAX_RENDER_STEPS) };
}

/// Starts a render's budget on this thread.
pub(crate) fn start_budget() {
    STEPS_LEFT.with(|steps| steps.set(MAX_RENDER_STEPS));
}

/// Whether the render on this thread ran out of steps.
pub(crate) fn budget_exhausted() -> bool {
    STEPS_LEFT.with(|steps| steps.get() == 0)
}

/// A registry with strict mode and only `HELPERS` (and the step counter) registered.
pub(crate) fn registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.unregister_helper("log");
    registry.unregister_helper("raw");
    registry.register_helper(STEP_HELPER, Box::new(Step));
    registry
}

/// Charges its argument to this thread's budget; fails the render once it is spent.
struct Step;

impl HelperDef for Step {
    fn call<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn Output,
    ) -> HelperResult {
        let cost = helper
            .param(0)
            .and_then(|cost| cost.value().as_u64())
            .unwrap_or(1);
        STEPS_LEFT.with(|steps| match steps.get().checked_sub(cost) {
            Some(left) if left > 0 => {
                steps.set(left);
                Ok(())
            }
            _ => {
                steps.set(0);
                Err(RenderError::from(RenderErrorReason::Other(
                    "render step budget spent".into(),
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests;
