// The enroll form (a modal <dialog>): case manager, family doctor (the one on file by default),
// consent to involve the family (yes/no, and who), then POST $defi-sante-enroll (Parameters).
import {h, clear} from './dom.js';

const enc = encodeURIComponent;

function radio(name, value, label, checked, extra = {}) {
  const id = `${name}-${value}`;
  return h('div', {class: 'choice'},
    h('input', {type: 'radio', id, name, value, checked: checked || null, ...extra}),
    h('label', {for: id}, label));
}

function parameters(form, info) {
  const data = new FormData(form);
  const params = [{name: 'caseManager', valueReference: {reference: data.get('caseManager')}}];
  if (data.get('doctor') === 'file' && info.familyDoctor) {
    params.push({name: 'familyDoctor', valueReference: {reference: info.familyDoctor.reference}});
  } else if (data.get('doctor') === 'other' && String(data.get('licence') || '').trim()) {
    params.push({name: 'familyDoctor', valueIdentifier: {system: info.licenceSystem,
      value: String(data.get('licence')).trim()}});
  }
  const family = data.get('family') === 'yes';
  params.push({name: 'familyInvolvement', valueBoolean: family});
  if (family) {
    for (const ref of data.getAll('relative')) params.push({name: 'relatedPerson', valueReference: {reference: ref}});
  }
  const goal = String(data.get('goal') || '').trim();
  if (goal) params.push({name: 'goal', valueString: goal});
  const start = String(data.get('start') || '');
  if (start && start !== new Date().toISOString().slice(0, 10)) params.push({name: 'start', valueDate: start});
  return {resourceType: 'Parameters', parameter: params};
}

export async function openEnroll(ctx, patient, trigger) {
  const {t} = ctx;
  const dialog = document.getElementById('enroll-dialog');
  const info = await ctx.api(`api/clients/${enc(patient.id)}/enroll-form`);
  let remembered = '';
  try { remembered = localStorage.getItem('pivot.caseManager') || ''; } catch { /* private mode */ }
  const error = h('p', {class: 'error', role: 'alert'});
  const relatives = h('fieldset', {id: 'enroll-relatives', hidden: true},
    h('legend', null, t('enroll.relatives')),
    info.relatedPersons.map((r, n) => h('div', {class: 'choice'},
      h('input', {type: 'checkbox', id: `rel-${n}`, name: 'relative', value: r.reference}),
      h('label', {for: `rel-${n}`}, r.name || r.reference, r.relationship ? ` (${r.relationship})` : ''))));
  const licence = h('input', {id: 'enroll-licence', name: 'licence', inputmode: 'numeric', autocomplete: 'off',
    disabled: info.familyDoctor ? true : null});
  const doctor = info.familyDoctor;
  const form = h('form', {id: 'enroll-form', novalidate: true},
    h('h2', {id: 'enroll-title'}, t('enroll.title', {name: info.patient.name})),
    h('div', {class: 'field'},
      h('label', {for: 'enroll-cm'}, t('enroll.caseManager')),
      h('select', {id: 'enroll-cm', name: 'caseManager', required: true},
        info.caseManagers.map((m) => h('option', {value: m.reference, selected: m.reference === remembered || null},
          m.display)))),
    h('fieldset', null, h('legend', null, t('enroll.familyDoctor')),
      doctor ? radio('doctor', 'file', t('enroll.doctorOnFile', {name: doctor.display,
        licence: doctor.licence ? ` (${t('enroll.licence')} ${doctor.licence})` : ''}), true) : null,
      radio('doctor', 'other', t('enroll.doctorOther'), !doctor),
      h('div', {class: 'field indent'}, h('label', {for: 'enroll-licence'}, t('enroll.licenceLabel')), licence)),
    h('fieldset', null, h('legend', null, t('enroll.family')),
      radio('family', 'no', t('enroll.familyNo'), true),
      radio('family', 'yes', t('enroll.familyYes'), false,
        {disabled: info.relatedPersons.length ? null : true, 'aria-describedby': 'enroll-family-help'}),
      h('p', {id: 'enroll-family-help', class: 'small muted'},
        info.relatedPersons.length ? t('enroll.familyHelp') : t('enroll.noRelatives'))),
    relatives,
    h('div', {class: 'field'}, h('label', {for: 'enroll-goal'}, t('enroll.goal')),
      h('textarea', {id: 'enroll-goal', name: 'goal', rows: 2})),
    h('div', {class: 'field'}, h('label', {for: 'enroll-start'}, t('enroll.start')),
      h('input', {id: 'enroll-start', name: 'start', type: 'date', value: new Date().toISOString().slice(0, 10)})),
    error,
    h('div', {class: 'actions'},
      h('button', {type: 'submit', class: 'primary', id: 'enroll-submit'}, t('enroll.submit')),
      h('button', {type: 'button', id: 'enroll-cancel', onclick: () => dialog.close()}, t('enroll.cancel'))));
  form.addEventListener('change', () => {
    const data = new FormData(form);
    relatives.hidden = data.get('family') !== 'yes';
    licence.disabled = data.get('doctor') !== 'other';
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = parameters(form, info);
    if (body.parameter.some((p) => p.name === 'familyInvolvement' && p.valueBoolean) &&
        !body.parameter.some((p) => p.name === 'relatedPerson')) {
      error.textContent = t('enroll.pickRelative');
      return;
    }
    const submit = form.querySelector('#enroll-submit');
    submit.disabled = true;
    error.textContent = '';
    try {
      await ctx.api(`${ctx.fhirBase}/Patient/${enc(patient.id)}/$defi-sante-enroll`, {method: 'POST',
        headers: {'Content-Type': 'application/fhir+json'}, body: JSON.stringify(body)});
      try { localStorage.setItem('pivot.caseManager', new FormData(form).get('caseManager')); } catch { /* */ }
      dialog.close();
      ctx.announce(t('enroll.done', {name: info.patient.name}));
      ctx.go(`#/clients/${enc(info.patient.id)}`);
    } catch (err) {
      error.textContent = t('enroll.failed', {text: err.message});
      submit.disabled = false;
    }
  });
  clear(dialog).append(form);
  dialog.setAttribute('aria-labelledby', 'enroll-title');
  dialog.addEventListener('close', () => { if (trigger && trigger.isConnected) trigger.focus(); }, {once: true});
  dialog.showModal();
  form.querySelector('#enroll-cm').focus();
}
