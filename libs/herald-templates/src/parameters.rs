//! Infers the top-level parameters a template uses by walking its handlebars syntax tree.
//! Names inside `#each` and `#with` bodies are relative to the item, so only the block's own
//! argument is collected there.

use std::collections::BTreeSet;

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};

pub(crate) fn collect(template: &Template, names: &mut BTreeSet<String>) {
    for element in &template.elements {
        match element {
            TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
                expression(helper, names);
            }
            TemplateElement::HelperBlock(helper) => {
                helper
                    .params
                    .iter()
                    .for_each(|param| parameter(param, names));
                let scoped = matches!(&helper.name, Parameter::Name(name) if name == "each" || name == "with");
                if let Some(body) = helper.template.as_ref().filter(|_| !scoped) {
                    collect(body, names);
                }
                if let Some(inverse) = &helper.inverse {
                    collect(inverse, names);
                }
            }
            _ => {}
        }
    }
}

fn expression(helper: &HelperTemplate, names: &mut BTreeSet<String>) {
    if helper.params.is_empty() && helper.hash.is_empty() {
        // `{{name}}`: the name is the variable.
        match &helper.name {
            Parameter::Name(name) => {
                names.insert(first_segment(name));
            }
            other => parameter(other, names),
        }
    } else {
        helper
            .params
            .iter()
            .for_each(|param| parameter(param, names));
        helper
            .hash
            .values()
            .for_each(|param| parameter(param, names));
    }
}

fn parameter(parameter: &Parameter, names: &mut BTreeSet<String>) {
    match parameter {
        Parameter::Path(Path::Relative((segments, _))) => {
            if let Some(PathSeg::Named(name)) = segments.first() {
                names.insert(name.clone());
            }
        }
        Parameter::Name(name) => {
            names.insert(first_segment(name));
        }
        _ => {}
    }
}

fn first_segment(name: &str) -> String {
    name.split(['.', '/', '['])
        .next()
        .unwrap_or(name)
        .to_owned()
}
